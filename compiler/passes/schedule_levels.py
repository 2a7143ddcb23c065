"""Pass `schedule_levels`: when each memory changes, in which order a layer runs, and where.

- a memory on `every: N` has chunk N (its state's gradients are taken at chunk starts);
- `reset: {kind: level}` resets it every period of that slower level;
- each tensor lives on the sequence's time axis or on a `with_prefix` region's;
- a read whose answer feeds its memory's own update (Titans MAC retrieval, Hope's
  self-generated values) is a feedback read, answered from the state carried in; the other
  reads are answered together with the update (a joint step);
- a layer with feedback reads (or a segmented prefix) runs in sequential segments: the gcd of
  those memories' chunks (1 for `read_then_write`);
- memories that learn from the task loss (CMS) make the whole model run in windows of the gcd
  of their chunks, each window's loss feeding their updates (NL eq. 71);
- a segmented layer's per-position ops and memories without feedback that no step inside
  the segments needs run once over the whole span after them (`LayerPlan.after_segments`);
- a model with sequential segments trains in recomputed spans (model.py), each a multiple of
  every segment and chunk, so no span ends inside one; any model can be asked to.
The layer's step order is decided here and nowhere else (the module runs `LayerPlan.steps`).
"""

from __future__ import annotations

import os
from math import gcd, lcm

import networkx as nx

from nestdsl.compiler.plan import LayerPlan, Plan
from nestdsl.errors import Diagnostic, SpecError
from nestdsl.spec.memory import CacheStructure, LevelReset, TaskObjective
from nestdsl.spec.ops import DropPrefix, Persistent, Read, WithPrefix, inputs_of, per_position

RECOMPUTE_ENV = "NESTDSL_RECOMPUTE"  # "0": keep every span's intermediates (the reference path)
AFTER_ENV = "NESTDSL_AFTER_SEGMENTS"  # "0": every step inside the segments (the reference path)


def schedule_levels(plan: Plan) -> Plan:
    levels = plan.spec.levels
    errors: list[Diagnostic] = []
    task_chunks = []
    for layer in plan.layers:
        for m in layer.memories.values():
            m.chunk = m.every if isinstance(m.every, int) else 1
            if isinstance(m.memory.reset, LevelReset):
                m.reset_every = levels[m.memory.reset.level].every
            if isinstance(m.memory.objective, TaskObjective) and isinstance(m.every, int):
                task_chunks.append(m.chunk)
        errors += _axes(plan, layer)
        errors += _steps(plan, layer)
        layer.segment, layer.segment_why = _segment(plan, layer)
        if layer.segment and os.environ.get(AFTER_ENV, "1") != "0":
            layer.after_segments, layer.kept_from_segments = _after_segments(layer)
    if errors:
        raise SpecError(errors)
    window = 0
    for c in task_chunks:
        window = gcd(window, c)
    plan.task_window = window or None
    plan.span_unit = _span_unit(plan)
    plan.recompute_unit = _recompute_unit(plan)
    plan.done.append("schedule_levels")
    return plan


def _span_unit(plan: Plan) -> int:
    """The lcm of every segment and every in-context chunk (the task-loss windows' among
    them), so no span ends inside one: what training recomputes spans of when asked to."""
    segments = [layer.segment for layer in plan.layers if layer.segment]
    chunks = [m.chunk for m in plan.memories() if isinstance(m.every, int)]
    return lcm(*segments, *chunks)


def _recompute_unit(plan: Plan) -> int | None:
    """The span unit of a model that runs in sequential segments (its backward would otherwise
    keep every segment's intermediates), which trains in spans unless told otherwise; None for
    the others: the chunked kernels recompute chunk groups themselves, and a model in task-loss
    windows pays for its spans with a forward pass that differentiates every window (hope: about
    1.35x the step time, for half the memory at T = 512, docs/benchmarks.md)."""
    if plan.task_window or not any(layer.segment for layer in plan.layers):
        return None
    if os.environ.get(RECOMPUTE_ENV, "1") == "0":
        return None
    return plan.span_unit


def data_graph(block) -> nx.DiGraph:
    """Block nodes with an edge from each input to its consumer."""
    g = nx.DiGraph()
    g.add_nodes_from(block.nodes)
    for name, op in block.nodes.items():
        g.add_edges_from((s, name) for s in inputs_of(op) if s in block.nodes)
    return g


def _node_at(plan: Plan, layer: LayerPlan, name: str):
    return plan.at("blocks", layer.block_index, "nodes", name)


def _axes(plan: Plan, layer: LayerPlan) -> list[Diagnostic]:
    """Each tensor's time axis: None (the sequence) or the `with_prefix` node it lives under."""
    nodes = layer.block.nodes
    persistent = {n for n, op in nodes.items() if op.op == "persistent"}
    axis: dict[str, str | None] = {layer.block.input: None}
    errors = []
    for name in nx.topological_sort(data_graph(layer.block)):
        op = nodes[name]
        if isinstance(op, WithPrefix):
            axis[name] = name
        elif isinstance(op, DropPrefix):
            axis[name] = None
        else:
            ins = [axis.get(i) for i in inputs_of(op) if i not in persistent]
            axis[name] = ins[0] if ins else None
            if len(set(ins)) > 1:
                errors.append(Diagnostic(
                    "time-axes", f"`{name}` mixes tensors of different time axes (inside and "
                    "outside a `with_prefix`)", _node_at(plan, layer, name),
                    "apply `drop_prefix` to the prefixed input first"))  # fmt: skip
    layer.axis = axis
    for decl in layer.memories:
        reads = [n for n, op in nodes.items() if isinstance(op, Read) and op.memory == decl]
        layer.axis[f"memory:{decl}"] = axis.get(reads[0]) if reads else None
    return errors


def _steps(plan: Plan, layer: LayerPlan) -> list[Diagnostic]:
    """("op", node) / ("feedback", read node) / ("memory", decl) in an executable order."""
    nodes = layer.block.nodes
    g = data_graph(layer.block)
    errors = []
    for decl, m in layer.memories.items():
        reads = [n for n, op in nodes.items() if isinstance(op, Read) and op.memory == decl]
        feedback = [r for r in reads if any(nx.has_path(g, r, w) for w in m.writes)]
        m.feedback = tuple(feedback)
        m.reads = tuple(r for r in reads if r not in feedback)
        if feedback and isinstance(m.memory.structure, CacheStructure):
            errors.append(Diagnostic(
                "feedback-read", f"`{feedback[0]}` reads cache `{decl}` and feeds that cache's "
                "own keys or values: a cache has no state to answer from before its write",
                _node_at(plan, layer, feedback[0]),
                "read the cache after its write, or make the memory a matrix or mlp"))  # fmt: skip
    order = step_graph(layer)
    try:
        layer.steps = sort_steps(order, layer)
    except nx.NetworkXUnfeasible:
        cycle = [s[1] for s, _ in nx.find_cycle(order)]
        errors.append(Diagnostic(
            "step-cycle", f"layer `{layer.block_name}` cannot run: {' -> '.join(cycle)} -> "
            f"{cycle[0]} needs its own output", _node_at(plan, layer, cycle[0]),
            "read one of these memories with `order: chunk_start` or `read_then_write`"))  # fmt: skip
    return errors


def step_graph(layer: LayerPlan) -> nx.DiGraph:
    """The steps of a layer (its memories' reads and feedback reads already split) with an
    edge from each step to every step that needs its output."""
    nodes = layer.block.nodes
    producer = {n: ("op", n) for n, op in nodes.items() if not isinstance(op, Read)}
    needs: dict[str, list[str]] = {}
    for decl, m in layer.memories.items():
        producer.update({r: ("feedback", r) for r in m.feedback})
        producer.update({r: ("memory", decl) for r in m.reads})
        needs[decl] = list(m.writes) + [nodes[r].query for r in m.reads]
    order = nx.DiGraph()
    order.add_nodes_from(producer.values())
    order.add_nodes_from(("memory", d) for d in layer.memories)
    edges = [(src, name) for name, op in nodes.items() for src in inputs_of(op)]
    edges += [(src, decl) for decl, srcs in needs.items() for src in srcs]
    for src, dst in edges:
        a = producer.get(src)
        b = producer.get(dst, ("memory", dst) if dst in layer.memories else None)
        if a is not None and b is not None and a != b:
            order.add_edge(a, b)
    return order


def sort_steps(order: nx.DiGraph, layer: LayerPlan, rank: dict | None = None) -> list:
    """One executable order: among the steps that are ready, the earliest block node first
    (memory updates as early as their inputs allow; `rank` places steps that are no block
    node). Raises `NetworkXUnfeasible` on a cycle."""
    index = {n: i for i, n in enumerate(layer.block.nodes)}
    rank = rank or {}
    return list(nx.lexicographical_topological_sort(
        order, key=lambda s: (rank.get(s, index.get(s[1], -1)), s[0])))  # fmt: skip


def _after_segments(layer: LayerPlan) -> tuple[frozenset, tuple[str, ...]]:
    """The steps a segmented layer runs once over the whole span after its sequential
    segments, and the values it keeps from the segments for them (and the block's output).
    A step goes after when it is on the time axis, no step inside the segments needs it, and
    it is a per-position op or a memory without feedback reads (a memory gives the same
    numbers on a span as on its pieces: streaming). Fewer and larger operations for the same
    numbers: Titans MAC's output gate and feed-forward (10 of its 34 steps per segment),
    Hope's output projection and continuum memory (14 of 41)."""
    order = step_graph(layer)
    nodes = layer.block.nodes

    def movable(kind: str, name: str) -> bool:
        if kind == "memory":
            return not layer.memories[name].feedback and layer.axis.get(f"memory:{name}") is None
        return kind == "op" and per_position(nodes[name]) and layer.axis.get(name) is None

    def inputs(kind: str, name: str) -> list[str]:
        if kind == "memory":
            m = layer.memories[name]
            return [*m.writes, *(nodes[r].query for r in m.reads)]
        return inputs_of(nodes[name])

    after: set[tuple[str, str]] = set()
    for step in reversed(list(nx.topological_sort(order))):
        if movable(*step) and all(s in after for s in order.successors(step)):
            after.add(step)
    made_after = {n for kind, name in after
                  for n in ([name] if kind == "op" else layer.memories[name].reads)}  # fmt: skip
    kept = {n for step in after for n in inputs(*step)} | {layer.block.out}
    persistent = {n for n, op in nodes.items() if isinstance(op, Persistent)}
    return frozenset(after), tuple(sorted(kept - made_after - persistent))


def _segment(plan: Plan, layer: LayerPlan) -> tuple[int | None, str]:
    """Segment length and why, if some memory's writes depend on its own reads within the
    layer, or the layer prefixes each segment (Titans MAC)."""
    nodes = layer.block.nodes
    segment, why, feeding = 0, [], []
    for name, op in nodes.items():  # a segmented prefix starts a new region every segment
        if isinstance(op, WithPrefix) and op.segment:
            segment = gcd(segment, plan.spec.levels[op.segment].every)
            why.append(f"`{name}` prefixes every `{op.segment}` period")
    for m in layer.memories.values():
        steps = [1 if nodes[r].order == "read_then_write" else m.chunk for r in m.feedback]
        for step in steps:
            segment = gcd(segment, step)
        if steps:
            feeding.append(f"`{m.decl}` (step {min(steps)})")
    if feeding:
        why.append("reads of " + ", ".join(feeding) + " feed their own writes")
    return segment or None, "; ".join(why)
