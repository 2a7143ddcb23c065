"""Pass `group_memories`: memories of a layer that compute the same function run as one call.

Heads of a deep memory never interact: each head's weights learn from that head's keys,
values and gates only (Titans eq. 13, Hope eq. 88 per head). Memories of one layer that share
the kernel, level, chunk, reset, structure, every lowered option (rule, retention, objective,
step-size sources, ...) and the orders of their reads are therefore one memory whose heads are
theirs side by side: Hope's `M_k`, `M_v`, `M_eta`, `M_alpha` (NL §8.2, eqs. 88-91) become one
`deep_memory` call with 4H heads, their keys, values, gates and initial states concatenated
along the head axis, and their feedback reads of the same order (v^_□ = M_□,t0(v), eqs. 83-84)
one read. The results are the ungrouped ones (the same arithmetic per head); only the number
of kernel calls changes. Hope is bound by that number (docs/benchmarks.md, issue 13).

A group whose every read is a feedback read at the chunk start (Hope's four, eqs. 90-91: "at
the state their chunk began with") never has its state read inside a chunk, so its write can
wait for the chunk's end (`GroupPlan.defer`): in Hope's 8-token segments the chunk-16 group
then runs once per chunk, over the whole chunk, instead of once per segment with the chunk's
first half replayed in the second.

Decided here and recorded in `LayerPlan.groups` (the step order is rewritten with one step per
group and per grouped feedback read); `LayerPlan.ungrouped` says why each other deep memory
runs alone. `NESTDSL_GROUP_MEMORIES=0` turns grouping off (the reference path the tests
compare against).
"""

from __future__ import annotations

import dataclasses
import os

import networkx as nx

from nestdsl.compiler.passes.schedule_levels import sort_steps, step_graph
from nestdsl.compiler.plan import GroupPlan, LayerPlan, MemoryPlan, Plan

ENV = "NESTDSL_GROUP_MEMORIES"
GROUPED_KERNELS = ("deep_memory",)  # the module that runs a group: memory_group.py


def group_memories(plan: Plan) -> Plan:
    enabled = os.environ.get(ENV, "1") != "0"
    for layer in plan.layers:
        layer.groups, layer.ungrouped = {}, {}
        deep = [m for m in layer.memories.values() if m.kernel in GROUPED_KERNELS]
        for m in layer.memories.values():
            if m.kernel not in GROUPED_KERNELS:
                layer.ungrouped[m.decl] = (
                    f"kernel {m.kernel}: only {GROUPED_KERNELS[0]} calls are grouped"
                )
        if not enabled:
            layer.ungrouped.update({m.decl: f"grouping is off ({ENV}=0)" for m in deep})
            continue
        _group(layer, deep)
    plan.done.append("group_memories")
    return plan


def signature(layer: LayerPlan, m: MemoryPlan) -> dict[str, object]:
    """What must be equal for two memories to run as one call, by what it is called."""
    nodes = layer.block.nodes
    return {
        "level": m.level,
        "chunk": m.chunk,
        "reset": (m.memory.reset.model_dump(), m.reset_every),
        "structure": m.memory.structure.model_dump(exclude={"heads"}),
        "lowered options": dataclasses.replace(m.options, heads=0),
        "time axis": layer.axis.get(f"memory:{m.decl}"),
        "feedback read orders": tuple(nodes[r].order for r in m.feedback),
        "read orders": tuple(nodes[r].order for r in m.reads),
        "after the segments": ("memory", m.decl) in layer.after_segments,
    }


def _group(layer: LayerPlan, deep: list[MemoryPlan]) -> None:
    classes: list[list[MemoryPlan]] = []
    for m in deep:
        if m.options.anchored:  # each call decays toward its own initial state: not joined
            layer.ungrouped[m.decl] = "retention toward the initial state runs alone"
            continue
        same = next((c for c in classes if signature(layer, c[0]) == signature(layer, m)), None)
        if same is None:
            classes.append([m])
        else:
            same.append(m)
    for members in classes:
        if len(members) == 1:
            layer.ungrouped[members[0].decl] = _why_alone(layer, members[0], deep)
            continue
        group = GroupPlan(
            name="+".join(m.decl for m in members), members=tuple(m.decl for m in members),
            heads=sum(m.heads for m in members),
            reads=tuple(zip(*(m.reads for m in members))),
            feedback=tuple(zip(*(m.feedback for m in members))))  # fmt: skip
        group.defer = _deferrable(layer, members[0])
        steps = _steps_with(layer, [*layer.groups.values(), group])
        if steps is None:  # merging would need a member's output before another's input
            for m in members:
                layer.ungrouped[m.decl] = (f"one call for {group.name} would need an output "
                                           "of the call before its inputs (a step cycle)")  # fmt: skip
            continue
        layer.groups[group.name] = group
        layer.steps = steps
        if ("memory", members[0].decl) in layer.after_segments:  # all of them (signature)
            gone = {("memory", m.decl) for m in members}
            layer.after_segments = (layer.after_segments - gone) | {("group", group.name)}


def _deferrable(layer: LayerPlan, m: MemoryPlan) -> bool:
    """Whether the group's writes can wait for its chunk's end: nothing reads its state
    inside a chunk (every read is a feedback read at the chunk start), and no reset or
    prefixed region splits its spans."""
    nodes = layer.block.nodes
    return (m.chunk > 1 and not m.reads and m.reset_every is None and m.options.window == 1
            and layer.axis.get(f"memory:{m.decl}") is None
            and all(nodes[r].order == "chunk_start" for r in m.feedback))  # fmt: skip


def _steps_with(layer: LayerPlan, groups: list[GroupPlan]):
    """The layer's step order with each group's update and grouped feedback reads as one
    step each, or None if that order does not exist."""
    merged, rank = {}, {}
    index = {n: i for i, n in enumerate(layer.block.nodes)}
    for g in groups:
        for decl in g.members:
            merged[("memory", decl)] = ("group", g.name)
        for reads in g.feedback:
            step = ("feedback_group", "+".join(reads))
            merged.update({("feedback", r): step for r in reads})
            rank[step] = min(index[r] for r in reads)
    # An edge between two members (merged into a self-loop) is a cycle too: one member's
    # call would need another's output.
    graph, order = step_graph(layer), nx.DiGraph()
    order.add_nodes_from(merged.get(s, s) for s in graph.nodes)
    order.add_edges_from((merged.get(a, a), merged.get(b, b)) for a, b in graph.edges)
    try:
        return sort_steps(order, layer, rank)
    except nx.NetworkXUnfeasible:
        return None


def _why_alone(layer: LayerPlan, m: MemoryPlan, deep: list[MemoryPlan]) -> str:
    """The first property that sets `m` apart from the deep memory most like it."""
    others = [o for o in deep if o is not m]
    if not others:
        return "no other deep memory in the layer"
    mine = signature(layer, m)

    def differences(o):
        theirs = signature(layer, o)
        return [k for k in mine if mine[k] != theirs[k]]

    nearest = min(others, key=lambda o: len(differences(o)))
    what = differences(nearest)[0]
    if what == "lowered options":
        fields = [f.name for f in dataclasses.fields(m.options)
                  if getattr(m.options, f.name) != getattr(nearest.options, f.name)
                  and f.name != "heads"]  # fmt: skip
        what = f"lowered options ({', '.join(fields)})"
    elif what in ("level", "chunk"):
        return f"{what} {mine[what]}, `{nearest.decl}`'s is {signature(layer, nearest)[what]}"
    return f"its {what} differs from `{nearest.decl}`'s"
