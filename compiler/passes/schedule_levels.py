"""Pass `schedule_levels`: when each memory changes, resets, and which layers run sequentially.

- a memory on `every: N` has chunk N (its state's gradients are taken at chunk starts);
- `reset: {kind: level}` resets it every period of that slower level;
- a layer whose memory is written from its own earlier read (Titans MAC, Hope's projections)
  runs in sequential segments: the gcd of those memories' chunks (1 for `read_then_write`);
- memories that learn from the task loss (CMS) make the whole model run in windows of the
  smallest such chunk, each window's loss feeding their updates (NL eq. 71).
"""

from __future__ import annotations

from math import gcd

import networkx as nx
from nestdsl.compiler.plan import LayerPlan, Plan

from nestdsl.graph.build import memory_params
from nestdsl.spec.memory import LevelReset, TaskObjective
from nestdsl.spec.ops import Read, WithPrefix, inputs_of


def schedule_levels(plan: Plan) -> Plan:
    levels = plan.spec.levels
    task_chunks = []
    for layer in plan.layers:
        for m in layer.memories.values():
            m.chunk = m.every if isinstance(m.every, int) else 1
            if isinstance(m.memory.reset, LevelReset):
                m.reset_every = levels[m.memory.reset.level].every
            if isinstance(m.memory.objective, TaskObjective) and isinstance(m.every, int):
                task_chunks.append(m.chunk)
        layer.segment = _segment(plan, layer)
    if task_chunks:
        window = 0
        for c in task_chunks:
            window = gcd(window, c)
        plan.task_window = window
    plan.done.append("schedule_levels")
    return plan


def write_sources(memory) -> list[str]:
    """Block tensors a memory's update reads: keys, values and data-dependent gates."""
    sources = [memory.keys, memory.values]
    sources += [p.value for p in memory_params(memory) if isinstance(p.value, str)]
    return [s for s in sources if s]


def _segment(plan: Plan, layer: LayerPlan) -> int | None:
    """Segment length if some memory's writes depend on its own reads within the layer, or
    the layer prefixes each segment (Titans MAC)."""
    nodes = layer.block.nodes
    g = nx.DiGraph()
    for name, op in nodes.items():
        g.add_node(name)
        for src in inputs_of(op):
            if src in nodes:
                g.add_edge(src, name)
    segment = 0
    for op in nodes.values():  # a segmented prefix starts a new region every segment
        if isinstance(op, WithPrefix) and op.segment:
            segment = gcd(segment, plan.spec.levels[op.segment].every)
    for name, op in nodes.items():
        if not isinstance(op, Read) or op.order == "write_then_read":
            continue
        m = layer.memories[op.memory]
        writes = [s for s in write_sources(m.memory) if s in nodes]
        if any(nx.has_path(g, name, s) for s in writes):
            step = 1 if op.order == "read_then_write" else m.chunk
            segment = gcd(segment, step)
    return segment or None
