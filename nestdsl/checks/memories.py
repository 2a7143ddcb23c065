"""Check `memories`: each optimization box is coherent (Miras §3's four design choices).

- a `cache` is non-parametric: objective `softmax`, no rule, no retention, and vice versa;
- objectives other than `task` learn from declared keys and values; `task` learns from the loss;
- memories updated in context need a rule; frozen (`never`) memories take none;
- a memory on the outer (`step`) level is an ordinary parameter: its objective is `task`;
- `norm_eps` needs a `norm`; `identity` initial states need a square memory; `polynomial` and
  `exp` feature maps need a degree, and only they take one;
- an Omega `window` belongs to a memory learned in context by a gradient rule.
"""

from __future__ import annotations

from collections.abc import Iterator

from nestdsl.checks.context import CheckContext
from nestdsl.errors import Diagnostic
from nestdsl.spec.common import Learned
from nestdsl.spec.memory import (
    CacheStructure,
    IdentityInit,
    LearnedInit,
    MatrixStructure,
    SoftmaxObjective,
    TaskObjective,
)
from nestdsl.spec.ops import Read


def check_memories(ctx: CheckContext) -> Iterator[Diagnostic]:
    yield from _cache_reads(ctx)
    for name, m in ctx.spec.memories.items():
        path = ("memories", name)
        cache = isinstance(m.structure, CacheStructure)
        softmax = isinstance(m.objective, SoftmaxObjective)
        task = isinstance(m.objective, TaskObjective)
        level = ctx.spec.levels.get(m.level)
        every = level.every if level else None
        if cache and not softmax:
            yield ctx.error("objective-structure",
                            f"a `cache` memory has no weights to fit `{m.objective.kind}`",
                            path + ("objective",), "a cache is read by `softmax`")  # fmt: skip
        if softmax and not cache:
            yield ctx.error("objective-structure",
                            f"objective `softmax` needs a `cache`, not a `{m.structure.kind}`",
                            path + ("objective",),
                            "use `structure: {kind: cache, ...}` for attention")  # fmt: skip
        if cache and m.reset.kind == "never" and m.structure.window is None:
            yield ctx.error("objective-structure",
                            "a full `cache` with `reset: never` keeps every token of every "
                            "sequence: it grows without bound", path + ("reset",),
                            "give the cache a `window:` or reset it with the sequence")  # fmt: skip
        if cache and m.init.kind != "zeros":
            yield ctx.error("objective-structure",
                            f"a `cache` starts empty; `init: {m.init.kind}` has nothing to set",
                            path + ("init",), "remove `init`")  # fmt: skip
        st = m.structure
        deep = st.kind == "gated_mlp" or st.kind == "mlp" and st.depth > 1
        if deep and m.init.kind == "zeros":
            yield ctx.error("objective-structure",
                            f"an `{st.kind}` memory that starts at zero never learns: every "
                            "layer's gradient passes through another layer that is zero",
                            path + ("init",) if "init" in m.model_fields_set else path,
                            "use `init: {kind: learned}` (a meta-learned start, NL eq. 28)",
                            key="init" not in m.model_fields_set)  # fmt: skip
        if getattr(st, "depth", None) == 1:
            for part in ("expansion", "activation"):
                if part in st.model_fields_set:
                    yield ctx.error("objective-structure",
                                    f"a `depth: 1` mlp is `x + W x`: it has no hidden layer, so "
                                    f"`{part}` changes nothing", path + ("structure", part),
                                    f"remove `{part}` or use `depth: 2`")  # fmt: skip
        if getattr(st, "norm", None) == "none" and "norm_eps" in st.model_fields_set:
            yield ctx.error("objective-structure",
                            "`norm_eps` is the floor of the memory's output norm, and it has none",
                            path + ("structure", "norm_eps"),
                            "remove `norm_eps` or add `norm: layernorm`")  # fmt: skip
        if cache:
            for part in ("rule", "retention"):
                if getattr(m, part) is not None:
                    yield ctx.error("objective-structure",
                                    f"a `cache` memory takes no `{part}`: it stores every pair",
                                    path + (part,), f"remove `{part}`")  # fmt: skip
            if m.structure.sinks and m.structure.window is None:
                yield ctx.error("objective-structure",
                                "`sinks` keep the first positions visible under a `window`; "
                                "without one every position is visible",
                                path + ("structure", "sinks"), "add `window:` or remove `sinks`")  # fmt: skip
            if every != 1 and isinstance(every, int):
                yield ctx.error("objective-structure",
                                f"a `cache` appends every token; its level must be `every: 1`, "
                                f"not {every}", path + ("level",))  # fmt: skip
        if not task and not cache or (cache and softmax):
            for part in ("keys", "values"):
                if getattr(m, part) is None:
                    yield ctx.error("missing-key",
                                    f"memory `{name}` ({m.objective.kind}) needs `{part}:`",
                                    path, f"name the block tensor it learns {part} from",
                                    key=True)  # fmt: skip
        if task:
            for part in ("keys", "values"):
                if getattr(m, part) is not None:
                    yield ctx.error("objective-structure",
                                    f"objective `task` learns from the model loss, not `{part}`",
                                    path + (part,), f"remove `{part}`")  # fmt: skip
        if isinstance(every, int) and not cache and m.rule is None:
            yield ctx.error("missing-key",
                            f"memory `{name}` updates every "
                            f"{'token' if every == 1 else f'{every} tokens'} but has no `rule`",
                            path, "add e.g. `rule: {kind: gd, lr: 0.1}`", key=True)  # fmt: skip
        if every == "never" and m.rule is not None:
            yield ctx.error("objective-structure", f"memory `{name}` is frozen but has a rule",
                            path + ("rule",), "remove `rule` or move it to a level that updates")  # fmt: skip
        if every == "step" and not task:
            yield ctx.error("objective-structure",
                            f"memory `{name}` on the outer level is trained by the optimizer; "
                            f"its objective must be `task`, not `{m.objective.kind}`",
                            path + ("objective",))  # fmt: skip
        if every == "step" and m.rule is not None:
            yield ctx.error("objective-structure",
                            f"memory `{name}` on the outer level is updated by its optimizer",
                            path + ("rule",), "remove `rule`")  # fmt: skip
        if isinstance(m.init, LearnedInit) and m.init.gain != 1.0 and (
                isinstance(m.structure, (MatrixStructure, CacheStructure))):  # fmt: skip
            yield ctx.error("objective-structure",
                            f"memory `{name}`: `gain` scales an MLP memory's random initial "
                            f"weights; a {m.structure.kind} memory has none (a learned matrix "
                            "starts at zero)",
                            path + ("init", "gain"), "remove `gain`")  # fmt: skip
        if isinstance(m.init, IdentityInit) and isinstance(m.structure, MatrixStructure):
            if m.structure.key_dim != m.structure.value_dim:
                yield ctx.error("objective-structure",
                                "an identity initial state needs key_dim == value_dim",
                                path + ("init",))  # fmt: skip
        retention = m.retention
        if getattr(retention, "mode", None) == "local" and (
                m.rule is None or m.rule.kind == "dgd" and not task or m.window is not None):  # fmt: skip
            yield ctx.error("objective-structure",
                            "local retention (decay, then the gradient step at the decayed "
                            "state) is lowered for `gd`, `momentum` and `muon` without a window "
                            "(and every rule of a `task` memory); `dgd` decays along the key",
                            path + ("retention", "mode"),
                            "use `mode: global` (weight decay, Titans)")  # fmt: skip
        yield from _window(ctx, name, m, every)
        yield from _normalize(ctx, name, m)
        yield from _feature_map(ctx, name, m)


def _feature_map(ctx: CheckContext, name: str, m) -> Iterator[Diagnostic]:
    """The tensor-power maps (`polynomial`, `exp`) are built to a degree; the others have none."""
    fm = m.feature_map
    if fm is None:
        return
    path = ("memories", name, "feature_map")
    power = fm.kind in ("polynomial", "exp")
    if power and fm.degree is None:
        yield ctx.error("missing-key",
                        f"the `{fm.kind}` feature map needs `degree` (its highest power p: "
                        "φ(q)·φ(k) sums (q·k)^i for i <= p)", path,
                        f"write `feature_map: {{kind: {fm.kind}, degree: 2}}`", key=True)  # fmt: skip
    if not power and fm.degree is not None:
        yield ctx.error("bad-value",
                        f"`degree` belongs to the tensor-power maps (`polynomial`, `exp`), not to "
                        f"`{fm.kind}`", path + ("degree",),
                        "remove `degree`, or use `kind: polynomial`")  # fmt: skip


def _window(ctx: CheckContext, name: str, m, every) -> Iterator[Diagnostic]:
    """The Omega rule sums the losses of a window of tokens in a gradient rule's objective."""
    if m.window is None:
        return
    path = ("memories", name, "window")
    if isinstance(m.structure, CacheStructure) or isinstance(m.objective, TaskObjective):
        yield ctx.error("objective-structure",
                        f"a `window` sums token losses of a memory learned in context, not of a "
                        f"`{m.objective.kind}` memory", path, "remove `window`")  # fmt: skip
    elif not isinstance(every, int):
        yield ctx.error("objective-structure",
                        f"memory `{name}` is not updated in context; a `window` has nothing to sum",
                        path, "remove `window`")  # fmt: skip
    elif m.rule is not None and m.rule.kind == "dgd":
        yield ctx.error("objective-structure",
                        "`dgd` is its own (delta-rule) objective on one token; it takes no window",
                        path, "use `gd`, `momentum` or `muon` with a window")  # fmt: skip
    elif m.window.tokens > 1 and isinstance(getattr(m.objective, "delta", None), str | Learned):
        yield ctx.error("objective-structure",
                        "a Huber `delta` per token is not supported with a window; use a constant",
                        ("memories", name, "objective", "delta"))  # fmt: skip


def _normalize(ctx: CheckContext, name: str, m) -> Iterator[Diagnostic]:
    """Katharopoulos's normalizer is a second, Hebbian memory of the keys: it needs updates
    that are linear in the values (a matrix memory, `dot`, `gd`) and positive features."""
    if not m.normalize:
        return
    path = ("memories", name, "normalize")
    hebbian = (isinstance(m.structure, MatrixStructure) and m.objective.kind == "dot"
               and m.rule is not None and m.rule.kind == "gd")  # fmt: skip
    if not hebbian:
        yield ctx.error("objective-structure",
                        "`normalize` divides by the memory of the keys, which only a `matrix` "
                        "memory with objective `dot` and rule `gd` (linear attention) keeps",
                        path, "remove `normalize`")  # fmt: skip
    elif m.feature_map is None or m.feature_map.kind not in ("elu1", "relu", "softmax"):
        yield ctx.error("objective-structure",
                        "`normalize` divides by φ(q)·Σφ(k), which needs positive features",
                        path, "add `feature_map: elu1` (or relu, softmax)")  # fmt: skip


def _cache_reads(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Attention sees the current token: a cache is read after its write."""
    for index, _, block in ctx.blocks():
        for name, op in block.nodes.items():
            memory = ctx.spec.memories.get(op.memory) if isinstance(op, Read) else None
            if isinstance(getattr(memory, "structure", None), CacheStructure):
                if op.order != "write_then_read":
                    yield ctx.error("objective-structure",
                                    f"cache `{op.memory}` is read with `order: {op.order}`; "
                                    "attention reads after the token's write",
                                    ("blocks", index, "nodes", name, "order"),
                                    "use `order: write_then_read` (the default)")  # fmt: skip
