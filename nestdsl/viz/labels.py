"""The words the level graph prints: band titles, memory and op summaries, edge label items.

Every label is built here so that the describe step (`nestdsl.viz.describe`) and the tests agree
on one wording. Memory summaries name the paper's parts of an associative memory (NL Def. 3 and
§5-6): the structure, the objective (attentional bias), the update rule and the retention.
"""

from __future__ import annotations

from nestdsl.spec.dims import DimError, evaluate
from nestdsl.spec.memory import (
    CacheStructure,
    GatedMLPStructure,
    KLRetention,
    L2Retention,
    LpObjective,
    LqRetention,
    MatrixStructure,
    MLPStructure,
)
from nestdsl.spec.ops import (
    Add,
    Aggregate,
    DropPrefix,
    Linear,
    Mul,
    Persistent,
    Read,
    Rope,
    Scale,
    ShortConv,
    WithPrefix,
)

ORDER_TEXT = {
    "write_then_read": "write→read",
    "read_then_write": "read→write",
    "chunk_start": "chunk start",
}


def period_text(every: int | str) -> str:
    if every == "step":
        return "every optimizer step"
    if every == "never":
        return "never"
    return f"every {every}"


def band_label(name: str, every: int | str) -> str:
    return f"{name} · {period_text(every)}"


def size_text(expr, dims: dict[str, int]) -> str:
    """A size expression as its number where the dims resolve it, else as written."""
    try:
        return str(evaluate(expr, dims))
    except DimError:
        return str(expr)


def structure_text(memory, dims: dict[str, int]) -> str:
    """`mlp 4 heads x 32, depth 2`, `matrix 4 heads x 32→32`, `cache 4 heads x 32, window 64`."""
    st = memory.structure
    heads = size_text(st.heads, dims)
    per = f"{heads} heads x " if heads != "1" else ""
    if isinstance(st, MatrixStructure):
        return f"matrix {per}{size_text(st.key_dim, dims)}→{size_text(st.value_dim, dims)}"
    if isinstance(st, CacheStructure):
        window = f", window {st.window}" if st.window else ""
        sinks = f" + {st.sinks} sinks" if st.sinks and st.window else ""
        return f"cache {per}{size_text(st.key_dim, dims)}{window}{sinks}"
    if isinstance(st, MLPStructure):
        return f"mlp {per}{size_text(st.dim, dims)}, depth {st.depth}"
    if isinstance(st, GatedMLPStructure):
        return f"gated mlp {per}{size_text(st.dim, dims)}"
    return st.kind


def learning_text(memory) -> str:
    """`objective · rule · retention`, e.g. `l2 · dgd · l2 decay` or `l2 over 8 tokens · muon`."""
    objective = memory.objective
    parts = [f"l{objective.p:g}" if isinstance(objective, LpObjective) else objective.kind]
    if getattr(objective, "switch", None) == "norm":
        parts[0] += " (norm)"
    if memory.window is not None and memory.window.tokens > 1:
        parts[0] += f" over {memory.window.tokens} tokens"
    if memory.normalize:
        parts[0] += ", normalized"
    rule = memory.rule
    if rule is not None:
        momentum = rule.kind == "dgd" and getattr(rule, "momentum", None) is not None
        parts.append(rule.kind + (" + momentum" if momentum else ""))
    retention = memory.retention
    if isinstance(retention, L2Retention):
        parts.append("l2 decay" + (" (local)" if retention.mode == "local" else ""))
    elif isinstance(retention, KLRetention):
        parts.append("kl retention")
    elif isinstance(retention, LqRetention):
        parts.append(f"l{retention.q:g} retention")
    return " · ".join(parts)


def optimizer_text(level) -> str | None:
    opt = level.optimizer
    if opt is None:
        return None
    return f"{opt.kind.replace('_', ' ')} · lr {opt.lr:g}"


def flow_item(role: str, tensor: str) -> str:
    """`keys k`, `lr eta`; a tensor named after its role is said once (`forget`, not
    `forget forget`)."""
    return role if role == tensor else f"{role} {tensor}"


def op_text(op, dims: dict[str, int]) -> str:
    """One line saying what a block op computes, for the expanded block (`viz --expand`)."""
    if isinstance(op, Linear):
        out = op.out if isinstance(op.out, list) else [op.out]
        shape = " x ".join(size_text(d, dims) for d in out)
        then = f" · {', '.join(op.then)}" if op.then else ""
        return f"linear → {shape}{then}"
    if isinstance(op, Read):
        return f"read {op.memory} @ {ORDER_TEXT[op.order]}"
    if isinstance(op, Scale):
        return f"× {op.by:g}"
    if isinstance(op, ShortConv):
        return f"short_conv {op.kernel}"
    if isinstance(op, Rope):
        return "rope"
    if isinstance(op, Persistent):
        return f"persistent {size_text(op.tokens, dims)} tokens"
    if isinstance(op, WithPrefix):
        per = f" per {op.segment} chunk" if op.segment else ""
        return f"prefix {', '.join(op.prefix)}{per}"
    if isinstance(op, DropPrefix):
        return f"drop prefix of {op.of}"
    if isinstance(op, Aggregate):
        return f"aggregate ({op.mode})"
    if isinstance(op, Add | Mul):
        return "+" if isinstance(op, Add) else "⊗"
    return op.op
