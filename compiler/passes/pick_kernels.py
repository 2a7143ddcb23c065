"""Pass `pick_kernels`: the fastest exact kernel for each memory instance, and why.

Special cases are equalities (DESIGN: "linear memory + dot + gd is linear attention"), so the
choice changes speed, never results: anything the specialised kernels do not cover runs on the
general `deep_memory` kernel, which computes the same function.
"""

from __future__ import annotations

from nestdsl.compiler.plan import LayerPlan, MemoryPlan, Plan
from nestdsl.errors import Diagnostic, SpecError


def pick_kernels(plan: Plan) -> Plan:
    errors = []
    for layer in plan.layers:
        for m in layer.memories.values():
            m.kernel, m.why = choose(m, _orders(layer, m))
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
    if o.window > 1:
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
    if (matrix and o.objective == "l2" and o.rule == "momentum"
            and o.retention in (None, "l2") and o.retention_mode == "global"
            and orders == {"write_then_read"}):  # fmt: skip
        return "titans_linear", "matrix + l2 + momentum + weight decay"
    return "deep_memory", "general chunk-parallel memory update"
