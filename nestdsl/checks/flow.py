"""Check `flow`: the per-step data flow of each block has no cycle.

Within one step a `read` that sees the current write (`write_then_read`) depends on the
tensors the memory learns from (keys, values, gates); a read of the previous or chunk-start
state (`read_then_write`, `chunk_start`) does not, so feeding a memory with its own earlier
read (Titans MAC, Hope's self-generated values) is fine.
"""

from __future__ import annotations

from collections.abc import Iterator

import networkx as nx

from nestdsl.checks.context import CheckContext
from nestdsl.errors import Diagnostic
from nestdsl.graph.build import memory_params
from nestdsl.spec.ops import Read, inputs_of


def step_graph(ctx: CheckContext, block) -> nx.DiGraph:
    """Tensor dependencies within one step: `a -> b` when computing b needs a."""
    g = nx.DiGraph()
    g.add_nodes_from(block.nodes)
    for name, op in block.nodes.items():
        for src in inputs_of(op):
            if src in block.nodes and src != name:
                g.add_edge(src, name, why="input")
        if isinstance(op, Read) and op.order == "write_then_read":
            memory = ctx.spec.memories.get(op.memory)
            if memory is None:
                continue
            sources = [memory.keys, memory.values]
            sources += [p.value for p in memory_params(memory) if isinstance(p.value, str)]
            for src in sources:
                if src in block.nodes:  # src == name is a read feeding its own write
                    g.add_edge(src, name, why=f"write of `{op.memory}`")
    return g


def check_flow(ctx: CheckContext) -> Iterator[Diagnostic]:
    for index, _, block in ctx.blocks():
        g = step_graph(ctx, block)
        seen: set[frozenset] = set()
        for cycle in nx.simple_cycles(g):
            key = frozenset(cycle)
            if key in seen:
                continue
            seen.add(key)
            start = min(cycle, key=list(block.nodes).index)
            i = cycle.index(start)
            cycle = cycle[i:] + cycle[:i]
            steps = []
            for a, b in zip(cycle, cycle[1:] + cycle[:1]):
                why = g.edges[a, b]["why"]
                steps.append(f"{a} -> {b}" + ("" if why == "input" else f" (via {why})"))
            via_memory = any(g.edges[a, b]["why"] != "input"
                             for a, b in zip(cycle, cycle[1:] + cycle[:1]))  # fmt: skip
            hint = ("read the previous state: `order: read_then_write` or `chunk_start`"
                    if via_memory else "break the loop: a tensor cannot depend on itself")  # fmt: skip
            yield ctx.error("flow-cycle",
                            "data-flow cycle: " + ", ".join(steps),
                            ("blocks", index, "nodes", start), hint, key=True)  # fmt: skip
            if len(seen) >= 5:
                break
