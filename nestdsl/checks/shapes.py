"""Check `shapes`: every size resolves, and tensor shapes agree along every edge.

Shapes are per position (batch and time omitted). The block input and output are
`(embed.dim,)`; `linear` sets a shape; memories fix the shapes of their keys, values, queries
and gates from their structure. Inferred shapes are stored in `ctx.shapes` for the compiler.
"""

from __future__ import annotations

from collections.abc import Iterator

from nestdsl.checks.context import CheckContext
from nestdsl.errors import Diagnostic
from nestdsl.graph.build import memory_params
from nestdsl.spec.dims import DimError, evaluate
from nestdsl.spec.memory import CacheStructure, MatrixStructure, TaskObjective
from nestdsl.spec.ops import (
    Add,
    Aggregate,
    DropPrefix,
    Linear,
    Mul,
    Persistent,
    Read,
    Rope,
    WithPrefix,
    inputs_of,
)

Shape = tuple[int, ...]


def _show(shape: Shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


class _Sizes:
    """Evaluates size expressions, turning failures into diagnostics."""

    def __init__(self, ctx: CheckContext):
        self.ctx = ctx
        self.errors: list[Diagnostic] = []

    def __call__(self, expr, path: tuple) -> int | None:
        try:
            return evaluate(expr, self.ctx.spec.dims)
        except DimError as err:
            self.errors.append(self.ctx.error("bad-dim", str(err), path, err.hint))
            return None


def memory_shapes(m, size, path: tuple) -> dict[str, Shape | None]:
    """Expected shapes of a memory's query, keys, values, output and gates."""
    st = m.structure
    heads = size(st.heads, path + ("structure", "heads"))
    if isinstance(st, (MatrixStructure, CacheStructure)):
        k = size(st.key_dim, path + ("structure", "key_dim"))
        v = size(st.value_dim, path + ("structure", "value_dim"))
    else:
        k = v = size(st.dim, path + ("structure", "dim"))
    if None in (heads, k, v):
        return {}
    c = m.window.tokens if m.window is not None else 1
    # A gate is per head `[heads]`, or per channel `[heads, value width]`: one value per row
    # of the state (Miras §5.4 backbone, ATLAS eq. 11's diag(α_t)).
    return {"query": (heads, k), "keys": (heads, k), "values": (heads, v), "out": (heads, v),
            "gate": (heads,), "channel_gate": (heads, v), "positions": (heads, c)}  # fmt: skip


def _fits(shape: Shape, expected: Shape) -> bool:
    """A single head may drop its head axis: `[d]` fits `[1, d]`, `[]` fits gate `[1]`."""
    return shape == expected or (expected[:1] == (1,) and shape == expected[1:])


def check_shapes(ctx: CheckContext) -> Iterator[Diagnostic]:
    spec = ctx.spec
    size = _Sizes(ctx)
    d_model = size(spec.embed.dim, ("embed", "dim"))
    size(spec.embed.vocab, ("embed", "vocab"))
    mem_shapes = {n: memory_shapes(m, size, ("memories", n)) for n, m in spec.memories.items()}
    errors: list[Diagnostic] = []
    for index, bname, block in ctx.blocks():
        base = ("blocks", index)
        size(block.repeat, base + ("repeat",))
        shapes: dict[str, Shape] = {}
        if d_model is not None:
            shapes[block.input] = (d_model,)
        for name in _topological(block):
            op = block.nodes[name]
            path = base + ("nodes", name)
            ins = inputs_of(op)
            if any(i not in shapes for i in ins):
                continue  # an upstream error was already reported
            shape = _infer(ctx, op, [shapes[i] for i in ins], size, path, mem_shapes, errors)
            if shape is not None:
                shapes[name] = shape
        for name, shape in shapes.items():
            ctx.shapes[(bname, name)] = shape
        if d_model is not None and block.out in shapes and shapes[block.out] != (d_model,):
            yield ctx.error("dim-mismatch",
                            f"block output `{block.out}` has shape {_show(shapes[block.out])}, "
                            f"but blocks map [{d_model}] (embed.dim) to [{d_model}]",
                            base + ("out",))  # fmt: skip
        yield from _memory_flows(ctx, block, bname, shapes, mem_shapes)
    yield from size.errors
    yield from errors


def _topological(block) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2 or name not in block.nodes:
            return
        if state.get(name) == 1:
            return  # a cycle: the flow check reports it
        state[name] = 1
        for i in inputs_of(block.nodes[name]):
            visit(i)
        state[name] = 2
        order.append(name)

    for name in block.nodes:
        visit(name)
    return order


def _infer(ctx, op, ins: list[Shape], size, path, mem_shapes, errors) -> Shape | None:

    def mismatch(message: str, sub: tuple = (), hint: str | None = None) -> None:
        errors.append(ctx.error("dim-mismatch", message, path + sub, hint))

    if isinstance(op, Linear):
        outs = op.out if isinstance(op.out, list) else [op.out]
        sizes = [size(o, path + ("out",)) for o in outs]
        if op.rank is not None:  # a low-rank factorization's r: a positive size
            size(op.rank, path + ("rank",))
        if None in sizes:
            return None
        return tuple(sizes)
    if isinstance(op, Persistent):
        n, d = size(op.tokens, path + ("tokens",)), size(op.dim, path + ("dim",))
        return None if None in (n, d) else (d,)
    if isinstance(op, Read):
        expected = mem_shapes.get(op.memory) or {}
        if not expected:
            return None
        if not _fits(ins[0], expected["query"]):
            mismatch(f"query `{op.query}` has shape {_show(ins[0])}, but memory `{op.memory}` "
                     f"reads queries of shape {_show(expected['query'])}", ("query",))  # fmt: skip
            return None
        return expected["out"] if len(ins[0]) == 2 else expected["out"][1:]
    if isinstance(op, Mul):
        a, b = ins
        if a == b or b == a[: len(b)] or a == b[: len(a)]:
            return max(a, b, key=len)
        mismatch(f"cannot multiply shapes {_show(a)} and {_show(b)}", ("in",),
                 "shapes must be equal, or one a per-head gate of the other")  # fmt: skip
        return None
    if isinstance(op, (Add, Aggregate)):
        if len(set(ins)) > 1:
            listed = ", ".join(f"`{i}` {_show(s)}" for i, s in zip(op.in_, ins))
            mismatch(f"`{op.op}` needs equal shapes, got {listed}", ("in",))
            return None
        return ins[0]
    if isinstance(op, Rope):
        if len(ins[0]) != 2 or ins[0][1] % 2:
            mismatch(f"rope needs a [heads, even dim] tensor, got {_show(ins[0])}", ("in",))
            return None
        return ins[0]
    if isinstance(op, WithPrefix):
        for i, (p, s) in enumerate(zip(op.prefix, ins[1:])):
            if s != ins[0]:
                mismatch(f"prefix `{p}` has shape {_show(s)}, the sequence {_show(ins[0])}",
                         ("prefix", i))  # fmt: skip
        return ins[0]
    if isinstance(op, DropPrefix):
        return ins[0]
    return ins[0]  # norms, elementwise functions, short convolutions keep the shape


def _memory_flows(ctx, block, bname, shapes, mem_shapes) -> Iterator[Diagnostic]:
    """Keys, values and gate tensors must have the shapes the memory's structure implies."""
    for name in dict.fromkeys(op.memory for op in block.nodes.values() if isinstance(op, Read)):
        m = ctx.spec.memories.get(name)
        expected = mem_shapes.get(name)
        if m is None or not expected or isinstance(m.objective, TaskObjective):
            continue
        flows = [("keys", m.keys, ("keys",)), ("values", m.values, ("values",))]
        flows += [("positions" if p.role == "positions" else "gate", p.value, p.path)
                  for p in memory_params(m) if isinstance(p.value, str)]  # fmt: skip
        for role, tensor, sub in flows:
            if tensor is None or tensor not in shapes:
                continue
            want = expected[role]
            got = shapes[tensor]
            if role == "gate":
                if _fits(got, want) or _fits(got, expected["channel_gate"]):
                    continue
                yield ctx.error("dim-mismatch",
                                f"memory `{name}` takes gates of shape {_show(want)} (per head) "
                                f"or {_show(expected['channel_gate'])} (per channel), but "
                                f"`{tensor}` has shape {_show(got)} in block `{bname}`",
                                ("memories", name) + sub,
                                f"a gate has one value per head, or one per head and value "
                                f"channel (inferred from `{name}`'s structure)")  # fmt: skip
                continue
            if not _fits(got, want):
                yield ctx.error("dim-mismatch",
                                f"memory `{name}` takes {role} of shape {_show(want)}, but "
                                f"`{tensor}` has shape {_show(got)} in block `{bname}`",
                                ("memories", name) + sub,
                                f"inferred from `{name}`'s structure")  # fmt: skip
