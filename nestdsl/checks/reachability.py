"""Check `reachability` (warnings): nodes whose output nothing uses.

A node is used when its tensor reaches the block output, directly or through a memory that
learns from it and is read on the way.
"""

from __future__ import annotations

from collections.abc import Iterator

from nestdsl.checks.context import CheckContext
from nestdsl.checks.flow import step_graph
from nestdsl.errors import Diagnostic
from nestdsl.graph.build import write_sources
from nestdsl.spec.ops import Read


def check_reachability(ctx: CheckContext) -> Iterator[Diagnostic]:
    for index, _, block in ctx.blocks():
        g = step_graph(ctx, block)
        # Writes of read-before-write memories feed later steps: count them as uses too.
        for name, op in block.nodes.items():
            memory = ctx.spec.memories.get(op.memory) if isinstance(op, Read) else None
            if memory is None:
                continue
            for _, src in write_sources(memory):
                if src in block.nodes and src != name:
                    g.add_edge(src, name)
        if block.out not in g:
            continue
        used = {block.out} | set(_ancestors(g, block.out))
        for name in block.nodes:
            if name not in used:
                yield ctx.warning("unreachable", f"`{name}` does not contribute to `{block.out}`",
                                  ("blocks", index, "nodes", name), "remove it or use it")  # fmt: skip


def _ancestors(g, node) -> set:
    seen: set = set()
    stack = [node]
    while stack:
        for pred in g.predecessors(stack.pop()):
            if pred not in seen:
                seen.add(pred)
                stack.append(pred)
    return seen
