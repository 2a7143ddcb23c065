"""Pass `pick_kernels`: the fastest exact kernel for each memory instance.

Special cases are equalities (DESIGN: "linear memory + dot + gd is linear attention"), so the
choice changes speed, never results: anything the specialised kernels do not cover runs on the
general `deep_memory` kernel, which computes the same function.
"""

from __future__ import annotations

from nestdsl.compiler.plan import MemoryPlan, Plan

from nestdsl.spec.memory import (
    CacheStructure,
    DotObjective,
    GDRule,
    L2Objective,
    L2Retention,
    MatrixStructure,
    MomentumRule,
    TaskObjective,
)
from nestdsl.spec.ops import Read


def pick_kernels(plan: Plan) -> Plan:
    for layer in plan.layers:
        orders = {}
        for op in layer.block.nodes.values():
            if isinstance(op, Read):
                orders.setdefault(op.memory, set()).add(op.order)
        for decl, m in layer.memories.items():
            m.kernel, m.why = choose(m, orders.get(decl, set()))
    plan.done.append("pick_kernels")
    return plan


def choose(m: MemoryPlan, orders: set[str]) -> tuple[str, str]:
    mem = m.memory
    st, obj, rule, ret = mem.structure, mem.objective, mem.rule, mem.retention
    if isinstance(st, CacheStructure):
        return "softmax_attention", "a cache read by softmax"
    if not isinstance(m.every, int):
        return "static", f"weights trained by the `{m.level}` level, not in context"
    if isinstance(obj, TaskObjective):
        return "task_memory", "learns from the model loss at chunk boundaries (CMS)"
    if mem.window is not None:
        return "deep_memory", f"Omega rule over {mem.window.tokens} tokens"
    matrix = isinstance(st, MatrixStructure)  # feature maps apply before any kernel
    per_token = m.chunk == 1  # every read order is exact on the per-token kernels
    if matrix and per_token and isinstance(rule, GDRule) and ret is None:
        if isinstance(obj, DotObjective):
            return "linear_attention", "matrix + dot + gd, every token"
        if isinstance(obj, L2Objective):
            return "delta_rule", "matrix + l2 + gd, every token"
    if (matrix and per_token and isinstance(rule, GDRule) and isinstance(obj, L2Objective)
            and isinstance(ret, L2Retention) and ret.mode == "local"):  # fmt: skip
        return "gated_delta_rule", "matrix + l2 + gd + local decay, every token"
    if (matrix and isinstance(obj, L2Objective) and isinstance(rule, MomentumRule)
            and (ret is None or isinstance(ret, L2Retention) and ret.mode == "global")
            and orders == {"write_then_read"}):  # fmt: skip
        return "titans_linear", "matrix + l2 + momentum + weight decay"
    return "deep_memory", "general chunk-parallel memory update"
