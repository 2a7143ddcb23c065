"""One block drawn op by op (`nestdsl viz SPEC --expand BLOCK`): its data flow made visible.

The folded picture shows a block as one node (`block layer`, `× 2 · 33 ops`). Expanded, the
block becomes a nested cluster in its band with one node per op (plus the block input), `data`
edges from each op to the ops that consume its tensor, `read` edges from a memory into the ops
that read it, and `context` edges from the tensors a memory learns from (NL Def. 3: its keys,
values and data-dependent gates) into the memory, labelled with their role. Self-modification
(Hope §8) then needs no edge of its own: a read op's output reaches another memory through the
ops in between, as the block computes it.

All of it is read from the IR (`checked.graph`): op nodes, `data`, `read`, `context` and `gate`
edges. One block repetition is drawn; every repetition has the same ops.
"""

from __future__ import annotations

from nestdsl.graph.build import GATE_FIELDS, block_name, memory_id, op_id, tensor_id
from nestdsl.viz.labels import op_text, size_text
from nestdsl.viz.picture import Band, EdgeSet, Picture, VizNode

ROLE_ORDER = ("keys", "values", *GATE_FIELDS)


def learned_flows(g, bname: str, memory: str) -> list[tuple[str, str]]:
    """(role, tensor) of each `context` / `gate` edge from a block's tensors into a memory,
    keys first, then values, then the gates in schema order."""
    flows = {(d["role"], g.nodes[t]["name"]) for t, _, d in g.in_edges(memory, data=True)
             if d.get("type") in ("context", "gate") and d.get("block") == bname}  # fmt: skip
    return sorted(flows, key=lambda rt: (ROLE_ORDER.index(rt[0]), rt[1]))


def expand_block(picture: Picture, g, spec, index: int, band: Band,
                 edges: EdgeSet) -> tuple[str, str]:  # fmt: skip
    """Add block `index`'s ops to `band` as one group; returns (group id, the input node)."""
    block = spec.blocks[index]
    bname = block_name(spec, index)
    group = f"block:{bname}"
    repeat = size_text(block.repeat, spec.dims)
    picture.groups[group] = f"block {bname}" + (f" × {repeat}" if repeat != "1" else "")

    # Each op makes the tensor of its name, so a tensor is drawn as the op that makes it.
    made_by: dict[str, str] = {}
    input_node = f"input:{bname}"
    band.nodes.append(VizNode(input_node, "input", block.input, ["block input"], group))
    made_by[tensor_id(bname, block.input)] = input_node
    for name, op in block.nodes.items():
        lines = [op_text(op, spec.dims)] + (["block output"] if name == block.out else [])
        band.nodes.append(VizNode(op_id(bname, name), "op", name, lines, group))
        made_by[tensor_id(bname, name)] = op_id(bname, name)

    for name in block.nodes:
        node = op_id(bname, name)
        for source, _, d in g.in_edges(node, data=True):
            if d.get("type") == "data" and source in made_by:
                edges.add("data", made_by[source], node)
            elif d.get("type") == "read":
                edges.add("read", source, node)

    # A tensor that every memory of a band learns from in one role is one edge to the band.
    learned: dict[str, dict[str, list[str]]] = {}  # tail node -> memory id -> roles
    for name in spec.memories:
        for role, tensor in learned_flows(g, bname, memory_id(name)):
            tail = made_by.get(tensor_id(bname, tensor))
            if tail is not None:
                learned.setdefault(tail, {}).setdefault(memory_id(name), []).append(role)
    for tail, roles in learned.items():
        for other in picture.bands:
            members = other.members()
            taking = [m for m in members if m in roles]
            alike = len({tuple(roles[m]) for m in taking}) == 1
            if len(members) > 1 and taking == members and alike:
                label = [f"all {len(members)}: {roles[members[0]][0]}", *roles[members[0]][1:]]
                edges.add("context", tail, other.anchor(), label).head_cluster = other.cluster
                continue
            for mem in taking:
                edges.add("context", tail, mem, roles[mem])
    return group, input_node
