"""Pass `expand_blocks`: one layer per block repetition, each with its tensors' shapes, the
level that trains its parameters, and its own memory instances."""

from __future__ import annotations

from nestdsl.compiler.plan import LayerPlan, MemoryPlan, Plan
from nestdsl.graph.build import block_name, write_sources
from nestdsl.spec.dims import evaluate
from nestdsl.spec.memory import CacheStructure, MatrixStructure
from nestdsl.spec.ops import Read


def expand_blocks(plan: Plan) -> Plan:
    spec = plan.spec
    for index, block in enumerate(spec.blocks):
        bname = block_name(spec, index)
        shapes = {t: s for (b, t), s in plan.checked.shapes.items() if b == bname}
        for rep in range(evaluate(block.repeat, plan.dims)):
            layer = LayerPlan(f"{bname}.{rep}", index, bname, block, block.level or plan.outer,
                              dict(shapes))  # fmt: skip
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
    writes = tuple(dict.fromkeys(t for _, t in write_sources(memory) if t in layer.block.nodes))
    return MemoryPlan(f"{layer.name}.{decl}", decl, memory, memory.level, every, heads, key_dim,
                      value_dim, writes=writes)  # fmt: skip
