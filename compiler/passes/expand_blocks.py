"""Pass `expand_blocks`: one layer per block repetition, each with its own memory instances."""

from __future__ import annotations

from nestdsl.compiler.plan import LayerPlan, MemoryPlan, Plan

from nestdsl.graph.build import block_name
from nestdsl.spec.dims import evaluate
from nestdsl.spec.memory import CacheStructure, MatrixStructure
from nestdsl.spec.ops import Read


def expand_blocks(plan: Plan) -> Plan:
    spec = plan.spec
    for index, block in enumerate(spec.blocks):
        bname = block_name(spec, index)
        for rep in range(evaluate(block.repeat, plan.dims)):
            layer = LayerPlan(f"{bname}.{rep}", index, bname, block)
            for op in block.nodes.values():
                if isinstance(op, Read) and op.memory not in layer.memories:
                    layer.memories[op.memory] = _instance(plan, layer, op.memory)
            plan.layers.append(layer)
    plan.done.append("expand_blocks")
    return plan


def _instance(plan: Plan, layer: LayerPlan, decl: str) -> MemoryPlan:
    memory = plan.spec.memories[decl]
    st = memory.structure
    heads = evaluate(st.heads, plan.dims)
    if isinstance(st, (MatrixStructure, CacheStructure)):
        key_dim, value_dim = evaluate(st.key_dim, plan.dims), evaluate(st.value_dim, plan.dims)
    else:
        key_dim = value_dim = evaluate(st.dim, plan.dims)
    every = plan.spec.levels[memory.level].every
    return MemoryPlan(f"{layer.name}.{decl}", decl, memory, memory.level, every, heads, key_dim,
                      value_dim)  # fmt: skip
