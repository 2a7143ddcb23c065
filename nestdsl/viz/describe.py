"""Describe a checked spec's level graph as plain data (`Picture`), ready to draw.

Everything here is read from the IR that `nestdsl.graph.build` made (`checked.graph`), never
re-decided: a memory's band is its `member` edge, a block's band the level of its `trains` edges,
initial-state owners and resets the `nesting` edges, reads the `read` edges, what a memory learns
from the `context` and `gate` edges (with their roles). Levels are ordered by
`nestdsl.checks.levels.slowness`, as `nestdsl show` orders them.

Where a tensor a memory learns from comes from is found by walking `data` edges upstream: to a
memory's `read` op (a *generation* edge, one memory making another's keys, values or gates:
self-modification, Hope §8, NL eqs. 83-91), or to the block input or a parameter op (a *context*
edge from the block). A tensor one read makes for several memories (Hope's k, eta and alpha feed
all five Titans memories) becomes one `tensor` node with one edge per band that learns from it,
instead of an edge per pair of memories.
"""

from __future__ import annotations

from nestdsl.checks.levels import slowness
from nestdsl.errors import UserError
from nestdsl.graph.build import block_name, level_id, memory_id, tensor_id
from nestdsl.spec.ops import Read
from nestdsl.viz.expand import expand_block, learned_flows
from nestdsl.viz.labels import (
    ORDER_TEXT,
    band_label,
    flow_item,
    learning_text,
    optimizer_text,
    size_text,
    structure_text,
)
from nestdsl.viz.picture import Band, EdgeSet, Picture, VizEdge, VizNode, group_cluster


def describe(checked, expand: str | None = None) -> Picture:
    """The picture's bands, nodes and edges. `expand` names a block drawn op by op."""
    spec, g = checked.spec, checked.graph
    names = [block_name(spec, i) for i in range(len(spec.blocks))]
    if expand is not None and expand not in names:
        raise UserError(f"--expand {expand}: the spec has no block named `{expand}`; its blocks "
                        f"are {', '.join(f'`{n}`' for n in names)}")  # fmt: skip
    ordered = sorted(spec.levels.items(), key=lambda kv: slowness(kv[1].every))
    bands = {name: Band(name, lv.every, band_label(name, lv.every)) for name, lv in ordered}
    slowest = bands[ordered[-1][0]]
    edges = EdgeSet()
    picture = Picture(spec.name, spec.description, list(bands.values()), [])

    for name, memory in spec.memories.items():
        level = _linked_level(g, memory_id(name))
        if level in bands:
            lines = [structure_text(memory, spec.dims), learning_text(memory)]
            bands[level].nodes.append(VizNode(memory_id(name), "memory", name, lines))

    def level_node(level: str) -> str:
        node_id = level_id(level)
        band = bands[level]
        if not any(n.id == node_id for n in band.nodes):
            lv = spec.levels[level]
            text = optimizer_text(lv) or ("never updates" if lv.every == "never" else "level clock")
            band.nodes.insert(0, VizNode(node_id, "level", level, [text]))
        return node_id

    for index, block in enumerate(spec.blocks):
        bname = block_name(spec, index)
        ops = [
            n for n, d in g.nodes(data=True) if d.get("kind") == "op" and d.get("block") == bname
        ]
        owner = _owner(g, ops)
        band = bands.get(owner, slowest)
        group = None
        if expand == bname:
            group, head = expand_block(picture, g, spec, index, band, edges)
        else:
            head = f"block:{bname}"
            repeat = size_text(block.repeat, spec.dims)
            lines = [f"× {repeat} · {len(ops)} ops" if repeat != "1" else f"{len(ops)} ops"]
            band.nodes.append(VizNode(head, "block", f"block {bname}", lines))
            _reads(g, ops, head, edges)
            _flows(g, spec, bname, head, picture, edges)
        if owner in bands:
            trains = edges.add(
                "trains",
                level_node(owner),
                head,
                ["frozen" if spec.levels[owner].every == "never" else "trains"],
            )
            if group is not None:
                trains.head_cluster = group_cluster(group)

    _optimizer_memories(spec, bands, picture, edges)
    _nesting(g, bands, edges, level_node)
    _merge_band_reads(edges, bands.values())
    for band in bands.values():
        if not band.nodes:
            band.nodes.append(VizNode(f"empty:{band.level}", "empty", "(nothing here)"))
    picture.edges = edges.all()
    return picture


def _optimizer_memories(spec, bands: dict[str, Band], picture: Picture, edges: EdgeSet) -> None:
    """An outer level's optimizer drawn as what it is, memories of the gradients (NL §4): one
    node per memory in the level's band, and a context edge `gradients` from every block the
    level trains (the gradient stream is the optimizer's context flow)."""
    from nestdsl.optim import declaration_of  # torch loads only when a spec has an optimizer

    for name, level in spec.levels.items():
        if level.every != "step" or level.optimizer is None or name not in bands:
            continue
        declaration = declaration_of(level.optimizer.model_dump(mode="json"))
        trained = [e.head for e in edges.of("trains") if e.tail == level_id(name)]
        for memory_name, memory in declaration.memories.items():
            node = f"optimizer:{name}/{memory_name}"
            lines = [f"{memory.structure.kind} memory of the gradients",
                     f"{memory.objective} · {memory.rule.kind} · keys {memory.keys}"]  # fmt: skip
            bands[name].nodes.append(VizNode(node, "memory", memory_name, lines))
            for block in trained:
                edges.add("context", block, node, ["gradients"])


def _linked_level(g, node: str) -> str | None:
    """The level a memory's `member` edge points at."""
    for _, level, d in g.out_edges(node, data=True):
        if d.get("type") == "member":
            return g.nodes[level]["name"]
    return None


def _owner(g, ops: list[str]) -> str | None:
    """The level whose `trains` edges reach the block's ops (None when no level trains it)."""
    for op in ops:
        for level, _, d in g.in_edges(op, data=True):
            if d.get("type") == "trains":
                return g.nodes[level]["name"]
    return None


def _reads(g, ops: list[str], block_node: str, edges: EdgeSet) -> None:
    """memory -> block: the queries of each read, grouped by which state answers."""
    reads: dict[str, dict[str, list[str]]] = {}
    for op in ops:
        for memory, _, d in g.in_edges(op, data=True):
            if d.get("type") == "read":
                spec = g.nodes[op]["spec"]
                reads.setdefault(memory, {}).setdefault(spec.order, []).append(spec.query)
    for memory, by_order in reads.items():
        items = [f"{', '.join(dict.fromkeys(qs))} @ {ORDER_TEXT[order]}"
                 for order, qs in by_order.items()]  # fmt: skip
        edges.add("read", memory, block_node, items)


def _flows(g, spec, bname: str, block_node: str, picture: Picture, edges: EdgeSet) -> None:
    """Context edges from the block, generation edges between memories (through shared tensors)."""
    made: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (producer, tensor) -> [(mem, role)]
    for name in spec.memories:
        mem = memory_id(name)
        for role, tensor in learned_flows(g, bname, mem):
            producers, static = tensor_sources(g, bname, tensor)
            for producer in sorted(producers):
                made.setdefault((producer, tensor), []).append((mem, role))
            if static or not producers:
                edges.add("context", block_node, mem, [flow_item(role, tensor)])
    shared: dict[tuple[str, ...], list[tuple[str, str]]] = {}  # consumers -> [(prod, tensor)]
    for (producer, tensor), uses in made.items():
        consumers = tuple(dict.fromkeys(m for m, _ in uses))
        if len(consumers) == 1:
            for mem, role in uses:
                edges.add("generation", memory_id(producer), mem, [flow_item(role, tensor)])
        else:
            shared.setdefault(consumers, []).append((producer, tensor))
    # Tensors learned by the same memories are drawn as one node: Hope's k, eta and alpha come
    # from three memories and feed all five, which is 3 + 2 edges instead of 15.
    for consumers, made_here in shared.items():
        tensors = [t for _, t in made_here]
        hub = f"tensors:{bname}/{'+'.join(tensors)}"
        line = f"learned by {len(consumers)} memories"
        picture.loose.append(VizNode(hub, "tensor", ", ".join(tensors), [line]))
        items: dict[str, list[str]] = {mem: [] for mem in consumers}
        for producer, tensor in made_here:
            edges.add("generation", memory_id(producer), hub, [tensor])
            for mem, role in made[(producer, tensor)]:
                items[mem].append(flow_item(role, tensor))
        makers = {memory_id(p) for p, _ in made_here}
        _fan_out(hub, items, picture.bands, edges, makers)


def _fan_out(hub: str, items: dict[str, list[str]], bands, edges: EdgeSet, makers) -> None:
    """hub -> memories: one edge to a band when all its memories learn the same from it."""
    for band in bands:
        members = band.members()
        taking = [m for m in members if m in items]
        if not taking:
            continue
        if len(members) > 1 and taking == members and len({tuple(items[m]) for m in taking}) == 1:
            label = [f"all {len(members)}: {items[members[0]][0]}", *items[members[0]][1:]]
            edges.add("generation", hub, band.anchor(makers), label).head_cluster = band.cluster
            continue
        for mem in taking:
            edges.add("generation", hub, mem, items[mem])


def tensor_sources(g, bname: str, tensor: str) -> tuple[set[str], bool]:
    """Walk `data` edges upstream from a block tensor: (memories whose reads produce it, whether
    it also comes from the block input or a parameter op such as `persistent`)."""
    memories: set[str] = set()
    static = False
    seen: set[str] = set()
    stack = [tensor_id(bname, tensor)]
    while stack:
        tid = stack.pop()
        if tid in seen or tid not in g:
            continue
        seen.add(tid)
        if g.nodes[tid].get("is_input"):
            static = True
            continue
        producers = [u for u, _, d in g.in_edges(tid, data=True) if d.get("type") == "data"]
        for op in producers:
            if isinstance(g.nodes[op].get("spec"), Read):
                memories.add(g.nodes[op]["spec"].memory)
                continue
            inputs = [u for u, _, d in g.in_edges(op, data=True) if d.get("type") == "data"]
            if not inputs:
                static = True  # a source op: learned tokens, parameters only
            stack.extend(inputs)
    return memories, static


def _nesting(g, bands: dict[str, Band], edges: EdgeSet, level_node) -> None:
    """level -> memory: the level owning a memory's initial state (init) or resetting it."""
    owned: dict[tuple[str, str, str], list[str]] = {}
    for band in bands.values():
        for mem in band.members():
            for owner, _, d in g.in_edges(mem, data=True):
                if d.get("type") == "nesting" and g.nodes[owner]["name"] in bands:
                    key = (g.nodes[owner]["name"], d["role"], band.level)
                    owned.setdefault(key, []).append(mem)
    for (owner, role, level), mems in owned.items():
        tail = level_node(owner)
        band = bands[level]
        if len(mems) > 1 and mems == band.members() and owner != level:
            grouped = edges.add("nesting", tail, band.anchor(), [f"all {len(mems)}: {role}"])
            grouped.head_cluster = band.cluster
        else:
            for mem in mems:
                edges.add("nesting", tail, mem, [role])


def _merge_band_reads(edges: EdgeSet, bands) -> None:
    """One read edge for a band whose memories (two or more) are all read the same way."""
    for band in bands:
        members = band.members()
        if len(members) < 2:
            continue
        reads = [e for e in edges.of("read") if e.tail in members]
        for head in dict.fromkeys(e.head for e in reads):
            group = [e for e in reads if e.head == head]
            if {e.tail for e in group} != set(members) or len({tuple(e.items) for e in group}) != 1:
                continue
            first = group[0]
            for e in group:
                edges.remove(e)
            items = [f"all {len(group)}: {first.items[0]}", *first.items[1:]]
            merged = edges.add("read", band.anchor(), head, items)
            merged.tail_cluster = band.cluster


__all__ = ["VizEdge", "describe", "tensor_sources"]
