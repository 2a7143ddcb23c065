"""Check `flow`: the per-step data flow of each block has no cycle; each cycle is reported once,
at the edge that closes it (the one running against declaration order), with the fix for it.

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
from nestdsl.graph.build import write_sources
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
            for _, src in write_sources(memory):
                if src in block.nodes:  # src == name is a read feeding its own write
                    g.add_edge(src, name, why=f"write of `{op.memory}`")
    return g


def check_flow(ctx: CheckContext) -> Iterator[Diagnostic]:
    """One error per edge that closes a cycle.

    Nodes are declared in an order; an edge that runs backwards in it (a node taking a tensor
    declared after it, or a `write_then_read` read whose memory learns from a later tensor) is
    what closes a loop: dropping every such edge inside a cycle leaves a graph that runs forward
    in declaration order, hence acyclic. So each one is reported once, with the shortest cycle
    it closes and the fix that fits its kind, however many elementary cycles share it.
    """
    for index, _, block in ctx.blocks():
        g = step_graph(ctx, block)
        order = {name: i for i, name in enumerate(block.nodes)}
        for component in nx.strongly_connected_components(g):
            if len(component) < 2:
                continue
            sub = g.subgraph(component)
            closing = sorted(((a, b) for a, b in sub.edges if order[a] > order[b]),
                             key=lambda e: (order[e[1]], order[e[0]]))  # fmt: skip
            for a, b in closing:
                cycle = nx.shortest_path(sub, b, a)  # b ... a, then the closing edge a -> b
                yield _cycle_error(ctx, index, g, cycle, a, b, order)


def _cycle_error(ctx, index, g, cycle, a, b, order) -> Diagnostic:
    start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
    cycle = cycle[start:] + cycle[:start]  # shown from the first declared node
    steps = []
    for x, y in zip(cycle, cycle[1:] + cycle[:1]):
        why = g.edges[x, y]["why"]
        steps.append(f"{x} -> {y}" + ("" if why == "input" else f" (via {why})"))
    why = g.edges[a, b]["why"]
    if why == "input":
        hint = (f"change the edge {a} -> {b}: `{b}` takes `{a}`, which is computed from `{b}`; "
                f"give `{b}` an input computed before it")  # fmt: skip
        path = ("blocks", index, "nodes", b)
    else:
        memory = why.removeprefix("write of ").strip("`")
        hint = (f"change the edge {a} -> {b}: `{b}` reads `{memory}` after this token's write, "
                f"which learns from `{a}`, computed from `{b}`; read the previous state "
                "(`order: read_then_write` or `chunk_start`) or learn from an earlier tensor")  # fmt: skip
        path = ("blocks", index, "nodes", b)
    return ctx.error("flow-cycle", "data-flow cycle: " + ", ".join(steps), path, hint, key=True)
