"""Pass `pick_kernels`: the fastest exact kernel for each memory instance, and why.

Special cases are equalities (DESIGN: "linear memory + dot + gd is linear attention"), so the
choice changes speed, never results: anything the specialised kernels do not cover runs on the
general `deep_memory` kernel, which computes the same function.

On a CUDA device the chosen op runs its Triton form where one exists. The fused deep-memory
kernel covers a subset of `deep_memory` (kernels/deep_memory/README.md §8); `why` says whether
a deep memory is in it and, if not, the reason it runs the torch chunk form there, so
`nestdsl show --after pick_kernels` answers "does this memory run fused on a GPU?" before any
GPU is involved. The kernel's own check (`deep_memory.triton.unsupported`) decides at run
time; a test holds the two to the same answer on every shipped spec.
"""

from __future__ import annotations

from nestdsl.compiler.plan import LayerPlan, MemoryPlan, Plan
from nestdsl.errors import Diagnostic, SpecError


def pick_kernels(plan: Plan) -> Plan:
    errors = []
    for layer in plan.layers:
        for m in layer.memories.values():
            m.kernel, m.why = choose(m, _orders(layer, m))
            if m.options.channel_gates and m.kernel != "linear_attention":
                # Rows of the state are independent recurrences (compiler/modules/channels.py).
                m.why += (f"; per-channel gates: runs as {m.heads * m.value_dim} one-channel "
                          "heads (keys repeated per channel)")  # fmt: skip
            if m.kernel == "deep_memory":
                m.why += "; " + triton_verdict(m)
            if m.options.normalize and m.kernel != "linear_attention":
                errors.append(Diagnostic(
                    "not-lowered", f"`normalize` on `{m.decl}` is linear attention's normalizer: "
                    "it needs a matrix memory with `dot`, `gd`, no retention, and reads after or "
                    f"before each token's write (this memory runs on {m.kernel})",
                    plan.at("memories", m.decl, "normalize"), "remove `normalize`"))  # fmt: skip
    if errors:
        raise SpecError(list(dict.fromkeys(errors)))
    plan.done.append("pick_kernels")
    return plan


def _orders(layer: LayerPlan, m: MemoryPlan) -> set[str]:
    return {layer.block.nodes[r].order for r in (*m.reads, *m.feedback)}


def choose(m: MemoryPlan, orders: set[str]) -> tuple[str, str]:
    o = m.options
    if o.structure == "cache":
        return "softmax_attention", "a cache read by softmax"
    if not isinstance(m.every, int):
        return "static", f"weights trained by the `{m.level}` level, not in context"
    if o.objective == "task":
        return "task_memory", "learns from the model loss at chunk boundaries (CMS)"
    if o.window > 1 or o.window_weighted:  # the matrix kernels have no token weights
        return "deep_memory", f"Omega rule over {o.window} tokens"
    matrix = o.structure == "matrix"  # feature maps apply before any kernel
    per_token = m.chunk == 1  # every read order is exact on the per-token kernels
    plain = matrix and o.rule == "gd" and o.retention is None
    # The dot objective's gradient -v k^T does not depend on the state, so its chunked update
    # is the per-token one: linear attention whatever the chunk (reads never see a chunk start).
    if plain and o.objective == "dot" and (per_token or "chunk_start" not in orders):
        return "linear_attention", "matrix + dot + gd: the gradient ignores the state"
    if plain and per_token and o.objective == "l2":
        return "delta_rule", "matrix + l2 + gd, every token"
    if (matrix and per_token and o.rule == "gd" and o.objective == "l2"
            and o.retention == "l2" and o.retention_mode == "local"):  # fmt: skip
        return "gated_delta_rule", "matrix + l2 + gd + local decay, every token"
    if (matrix and o.objective == "l2" and o.rule == "momentum" and not o.anchored
            and o.retention in (None, "l2") and o.retention_mode == "global"
            and orders == {"write_then_read"}):  # fmt: skip
        return "titans_linear", "matrix + l2 + momentum + weight decay"
    return "deep_memory", "general chunk-parallel memory update"


# The fused deep-memory kernels' limits (kernels/deep_memory/triton.py: MAX_CHUNK,
# tile_budget; triton_backward.py: tile_budget; triton_support.MAX_HEAD_DIM), repeated here so
# that validating a spec never imports torch or triton (a test holds the two to one answer).
TRITON_MAX_CHUNK = 64
TRITON_MAX_HEAD_DIM = 256


def triton_tile_budget(o) -> int:
    """The forward kernel's largest weight tile for lowered options ``o`` (half if anchored)."""
    return 128 * 128 // 2 if o.anchored else 128 * 128


def triton_backward_tile_budget(o) -> int:
    """The backward kernel's largest weight tile (half for the other rules and when anchored)."""
    return 64 * 128 if o.rule.startswith("dgd") and not o.anchored else 64 * 128 // 2


def triton_verdict(m: MemoryPlan) -> str:
    """What a CUDA device runs for deep memory ``m``: both fused kernels, the fused forward
    with the chunk form's backward, or the chunk form, with the reason."""
    reason = triton_fallback(m)
    if reason is not None:
        return f"triton runs the torch chunk form: {reason}"
    o = m.options
    hidden = o.hidden_dim or o.key_dim
    if _pow2(hidden) * _pow2(o.key_dim) > triton_backward_tile_budget(o):
        return (f"triton: fused forward, chunk-form backward (weight tile {hidden} x "
                f"{o.key_dim} over the backward's {triton_backward_tile_budget(o)} elements)")
    return "triton: fused forward and backward"


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def triton_fallback(m: MemoryPlan) -> str | None:
    """Why the fused Triton deep-memory kernel does not run memory ``m`` (None: it does)."""
    o, st = m.options, m.memory.structure
    kind = getattr(st, "kind", o.structure)
    depth = getattr(st, "depth", 1 if kind == "matrix" else 2)
    hidden = o.hidden_dim or o.key_dim  # key_dim: the width after the feature map
    checks = (
        (kind == "matrix", "a matrix memory (the kernel holds a 2-layer MLP)"),
        (kind == "gated_mlp", "the gated memory"),
        (depth != 2, f"depth {depth} (the kernel holds a 2-layer MLP)"),
        (not getattr(st, "residual", False), "a memory without the residual path"),
        (o.skip, f"the feature map (the memory runs as N(MLP(phi(k))) on {o.key_dim} features "
                 "without the residual path, which the kernel holds)"),
        (o.objective != "l2", f"objective={o.objective!r} (the kernel has l2)"),
        (o.rule not in ("gd", "momentum", "dgd", "dgd_momentum"), f"rule={o.rule!r}"),
        (o.retention not in (None, "l2"), f"retention={o.retention!r} (the kernel has l2)"),
        (o.retention_mode != "global", f"retention_mode={o.retention_mode!r}"),
        (o.window != 1 or o.window_weighted, "an Omega window"),
        (o.lag_token, "the lag token"),
        (m.chunk > TRITON_MAX_CHUNK, f"chunk_size {m.chunk} > {TRITON_MAX_CHUNK}"),
        (_pow2(hidden) * _pow2(o.key_dim) > triton_tile_budget(o),
         f"weight tile {hidden} x {o.key_dim} over {triton_tile_budget(o)} elements"),
        (max(hidden, o.key_dim) > TRITON_MAX_HEAD_DIM,
         f"head size {max(hidden, o.key_dim)} > {TRITON_MAX_HEAD_DIM}"),
    )  # fmt: skip
    for bad, why in checks:
        if bad:
            return why
    return None
