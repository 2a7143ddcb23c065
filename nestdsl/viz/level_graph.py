"""The level graph of a checked spec as a graphviz picture (what `nestdsl viz SPEC` draws).

Levels are horizontal bands from the fastest clock (top) to the slowest (bottom). Memories sit in
their level's band; each block is one compact node in the band of the level that trains it (its
ops are not drawn). Block tensors appear only as edge labels. Five kinds of edge:

- context:    block -> memory, the tensors a memory learns from (keys, values, data-dependent
              gates) when they are computed in the block from its input or its own parameters;
- generation: memory -> memory, when a read of one memory produces another's keys, values or
              gates (self-modification, Hope §8);
- nesting:    level -> memory, a slower level owning a memory's initial state or its reset;
- read:       memory -> block, the block's queries and the order of the read;
- trains:     level -> block, the level whose optimizer trains the block's parameters.

`describe` turns a `CheckedSpec` into plain data (`Picture`); `level_graph` draws it. The edges
come from the IR (`nestdsl.graph.build`): reads from `read` edges, and the origin of a context
tensor by walking `data` edges upstream to memory reads, the block input or parameter ops.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field

from nestdsl.checks.levels import slowness
from nestdsl.graph.build import (
    block_name,
    level_id,
    memory_id,
    memory_params,
    op_id,
    tensor_id,
)
from nestdsl.spec.dims import DimError, evaluate
from nestdsl.spec.memory import (
    CacheStructure,
    GatedMLPStructure,
    KLRetention,
    L2Retention,
    LearnedInit,
    LevelReset,
    LpObjective,
    LqRetention,
    MatrixStructure,
    MLPStructure,
)
from nestdsl.spec.ops import Read

FONT = "Helvetica"

# kind -> (graphviz edge attributes, legend text). The order is the legend's.
EDGE_STYLES: dict[str, tuple[dict[str, str], str]] = {
    "context": (
        {
            "color": "#1f77b4",
            "fontcolor": "#1f5f94",
            "style": "solid",
            "penwidth": "1.6",
            "arrowhead": "normal",
        },
        "context flow: block tensors a memory learns from",
    ),
    "generation": (
        {
            "color": "#d62728",
            "fontcolor": "#b01818",
            "style": "bold",
            "penwidth": "2.2",
            "arrowhead": "vee",
        },
        "generation: a memory's read makes another's keys/values/gates",
    ),
    "read": (
        {
            "color": "#2ca02c",
            "fontcolor": "#1d7a1d",
            "style": "solid",
            "penwidth": "1.4",
            "arrowhead": "onormal",
        },
        "read: queries, and which state answers",
    ),
    "nesting": (
        {
            "color": "#9467bd",
            "fontcolor": "#6a3d9a",
            "style": "dashed",
            "penwidth": "1.5",
            "arrowhead": "odiamond",
        },
        "nesting: a slower level owns the initial state / reset",
    ),
    "trains": (
        {
            "color": "#444444",
            "fontcolor": "#333333",
            "style": "dotted",
            "penwidth": "2.0",
            "arrowhead": "dot",
        },
        "trains: the level whose optimizer trains the parameters",
    ),
}

ORDER_TEXT = {
    "write_then_read": "write→read",
    "read_then_write": "read→write",
    "chunk_start": "chunk start",
}

# Band fill: in-context levels get lighter blues as they slow down; outer and frozen levels
# have their own colours.
_IN_CONTEXT_FILLS = ["#dcecfb", "#e3f0fb", "#e9f3fc", "#eff6fd", "#f3f8fd", "#f6fafe"]
_STEP_FILL = "#fdf3d8"
_NEVER_FILL = "#eeeeee"


# ---------------------------------------------------------------- plain-data picture


@dataclass
class VizNode:
    id: str
    kind: str  # memory | block | level | empty
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass
class Band:
    level: str
    every: int | str
    label: str
    nodes: list[VizNode] = field(default_factory=list)

    @property
    def cluster(self) -> str:
        return f"cluster_level_{self.level}"


@dataclass
class VizEdge:
    kind: str  # a key of EDGE_STYLES
    tail: str
    head: str
    items: list[str] = field(default_factory=list)  # label parts, in order, deduplicated
    head_cluster: str | None = None  # the edge points at a whole band (graphviz `lhead`)
    tail_cluster: str | None = None  # the edge leaves a whole band (graphviz `ltail`)

    @property
    def label(self) -> str:
        return ", ".join(self.items)


@dataclass
class Picture:
    name: str
    description: str | None
    bands: list[Band]
    edges: list[VizEdge]

    def node(self, node_id: str) -> VizNode:
        return next(n for b in self.bands for n in b.nodes if n.id == node_id)

    def edges_of(self, kind: str) -> list[VizEdge]:
        return [e for e in self.edges if e.kind == kind]


def period_text(every: int | str) -> str:
    if every == "step":
        return "every optimizer step"
    if every == "never":
        return "never"
    return f"every {every}"


def band_label(name: str, every: int | str) -> str:
    return f"{name} · {period_text(every)}"


def _size(expr, dims: dict[str, int]) -> str:
    try:
        return str(evaluate(expr, dims))
    except DimError:
        return str(expr)


def structure_text(memory, dims: dict[str, int]) -> str:
    """`mlp 4 heads x 32, depth 2`, `matrix 4 heads x 32→32`, `cache 4 heads x 32, window 64`."""
    st = memory.structure
    heads = _size(st.heads, dims)
    per = f"{heads} heads x " if heads != "1" else ""
    if isinstance(st, MatrixStructure):
        return f"matrix {per}{_size(st.key_dim, dims)}→{_size(st.value_dim, dims)}"
    if isinstance(st, CacheStructure):
        window = f", window {st.window}" if st.window else ""
        sinks = f" + {st.sinks} sinks" if st.sinks and st.window else ""
        return f"cache {per}{_size(st.key_dim, dims)}{window}{sinks}"
    if isinstance(st, MLPStructure):
        return f"mlp {per}{_size(st.dim, dims)}, depth {st.depth}"
    if isinstance(st, GatedMLPStructure):
        return f"gated mlp {per}{_size(st.dim, dims)}"
    return st.kind


def learning_text(memory) -> str:
    """`objective · rule · retention`, e.g. `l2 · dgd · l2 decay` or `l2 over 8 tokens · muon`."""
    objective = memory.objective
    parts = [f"l{objective.p:g}" if isinstance(objective, LpObjective) else objective.kind]
    if getattr(objective, "switch", None) == "norm":
        parts[0] += " (norm)"
    if memory.window is not None and memory.window.tokens > 1:
        parts[0] += f" over {memory.window.tokens} tokens"
    if memory.normalize:
        parts[0] += ", normalized"
    if memory.rule is not None:
        rule = memory.rule
        parts.append(rule.kind + (" + momentum" if getattr(rule, "momentum", None) is not None
                                  and rule.kind == "dgd" else ""))  # fmt: skip
    retention = memory.retention
    if isinstance(retention, L2Retention):
        parts.append("l2 decay" + (" (local)" if retention.mode == "local" else ""))
    elif isinstance(retention, KLRetention):
        parts.append("kl retention")
    elif isinstance(retention, LqRetention):
        parts.append(f"l{retention.q:g} retention")
    return " · ".join(parts)


def _optimizer_text(level) -> str | None:
    opt = level.optimizer
    if opt is None:
        return None
    return f"{opt.kind.replace('_', ' ')} · lr {opt.lr:g}"


# ---------------------------------------------------------------- spec -> picture


def describe(checked) -> Picture:
    """The picture's bands, nodes and edges, as plain data (tested without graphviz)."""
    spec, g = checked.spec, checked.graph
    dims = spec.dims
    outer = _outer_level(spec)
    ordered = sorted(spec.levels.items(), key=lambda kv: slowness(kv[1].every))
    bands = {name: Band(name, lv.every, band_label(name, lv.every)) for name, lv in ordered}

    for name, memory in spec.memories.items():
        if memory.level in bands:
            lines = [structure_text(memory, dims), learning_text(memory)]
            bands[memory.level].nodes.append(VizNode(memory_id(name), "memory", name, lines))

    edges: dict[tuple[str, str, str], VizEdge] = {}

    def edge(kind: str, tail: str, head: str, items: Iterable[str] = ()) -> VizEdge:
        found = edges.setdefault((kind, tail, head), VizEdge(kind, tail, head))
        for item in items:
            if item not in found.items:
                found.items.append(item)
        return found

    level_nodes: set[str] = set()

    def level_node(level: str) -> str:
        node_id = level_id(level)
        if node_id not in level_nodes and level in bands:
            level_nodes.add(node_id)
            lv = spec.levels[level]
            lines = [_optimizer_text(lv) or ("never updates" if lv.every == "never"
                                             else "level clock")]  # fmt: skip
            bands[level].nodes.insert(0, VizNode(node_id, "level", level, lines))
        return node_id

    for index, block in enumerate(spec.blocks):
        bname = block_name(spec, index)
        block_node = f"block:{bname}"
        owner = block.level or outer
        n_ops = sum(1 for n, d in g.nodes(data=True)
                    if d.get("kind") == "op" and d.get("block") == bname)  # fmt: skip
        repeat = _size(block.repeat, dims)
        lines = [f"× {repeat} · {n_ops} ops" if repeat != "1" else f"{n_ops} ops"]
        target = bands.get(owner) or bands[ordered[-1][0]]
        target.nodes.append(VizNode(block_node, "block", f"block {bname}", lines))
        if owner in bands:
            frozen = spec.levels[owner].every == "never"
            edge("trains", level_node(owner), block_node, ["frozen" if frozen else "trains"])

        # reads: memory -> block, with the queries and the read order
        reads: dict[str, dict[str, list[str]]] = {}
        for name, op in block.nodes.items():
            if isinstance(op, Read) and g.has_edge(memory_id(op.memory), op_id(bname, name)):
                by_order = reads.setdefault(op.memory, {})
                by_order.setdefault(op.order, []).append(op.query)
        for mem_name, by_order in reads.items():
            items = [f"{', '.join(dict.fromkeys(qs))} @ {ORDER_TEXT[order]}"
                     for order, qs in by_order.items()]  # fmt: skip
            edge("read", memory_id(mem_name), block_node, items)

        # what each memory read in this block learns from: context or generation
        for mem_name in reads:
            memory = spec.memories[mem_name]
            flows = [(r, t) for r, t in (("keys", memory.keys), ("values", memory.values)) if t]
            flows += [(p.role, p.value) for p in memory_params(memory)
                      if isinstance(p.value, str)]  # fmt: skip
            for role, tensor in flows:
                if not g.has_node(tensor_id(bname, tensor)):
                    continue
                producers, static = tensor_sources(g, bname, tensor)
                for producer in sorted(producers):
                    edge("generation", memory_id(producer), memory_id(mem_name),
                         [f"{role} {tensor}"])  # fmt: skip
                if static or not producers:
                    edge("context", block_node, memory_id(mem_name), [f"{role} {tensor}"])

    # nesting: the level owning each memory's initial state or reset
    owned: dict[tuple[str, str, str], list[str]] = {}
    for name, memory in spec.memories.items():
        if memory.level not in bands:
            continue
        if isinstance(memory.init, LearnedInit):
            by = memory.init.by or outer
            if by in bands:
                owned.setdefault((by, "init", memory.level), []).append(name)
        if isinstance(memory.reset, LevelReset) and memory.reset.level in bands:
            owned.setdefault((memory.reset.level, "reset", memory.level), []).append(name)
    for (owner, role, level), names in owned.items():
        tail = level_node(owner)
        band = bands[level]
        members = [n for n in band.nodes if n.kind == "memory"]
        if len(names) == len(members) and owner != level:
            label = f"{role} (all {len(names)})" if len(names) > 1 else role
            grouped = edge("nesting", tail, memory_id(names[0]), [label])
            grouped.head_cluster = band.cluster
        else:
            for name in names:
                edge("nesting", tail, memory_id(name), [role])

    merged = _merge_band_reads(list(edges.values()), bands.values())
    for band in bands.values():
        if not band.nodes:
            band.nodes.append(VizNode(f"empty:{band.level}", "empty", "(nothing here)"))
    return Picture(spec.name, spec.description, list(bands.values()), merged)


def _merge_band_reads(edges: list[VizEdge], bands: Iterable[Band]) -> list[VizEdge]:
    """One read edge for a band whose memories (two or more) are all read the same way."""
    out = list(edges)
    for band in bands:
        members = {n.id for n in band.nodes if n.kind == "memory"}
        if len(members) < 2:
            continue
        reads = [e for e in out if e.kind == "read" and e.tail in members]
        for head in dict.fromkeys(e.head for e in reads):
            group = [e for e in reads if e.head == head]
            if {e.tail for e in group} != members or len({tuple(e.items) for e in group}) != 1:
                continue
            first = group[0]
            items = [f"all {len(group)}: {first.items[0]}", *first.items[1:]]
            merged = VizEdge("read", first.tail, head, items, tail_cluster=band.cluster)
            out = [e for e in out if e not in group]
            out.append(merged)
    return out


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
            spec = g.nodes[op].get("spec")
            if isinstance(spec, Read):
                memories.add(spec.memory)
                continue
            inputs = [u for u, _, d in g.in_edges(op, data=True) if d.get("type") == "data"]
            if not inputs:
                static = True  # a source op: learned tokens, parameters only
            stack.extend(inputs)
    return memories, static


def _outer_level(spec) -> str | None:
    trained = [n for n, lv in spec.levels.items() if lv.optimizer is not None]
    return trained[0] if trained else None


# ---------------------------------------------------------------- picture -> graphviz


def _html_label(title: str, lines: list[str], *, title_size: int = 13,
                line_size: int = 10, color: str = "#444444") -> str:  # fmt: skip
    rows = [f'<font point-size="{title_size}"><b>{html.escape(title)}</b></font>']
    rows += [f'<font point-size="{line_size}" color="{color}">{html.escape(t)}</font>'
             for t in lines]  # fmt: skip
    return "<" + "<br/>".join(rows) + ">"


def _gv(node_id: str) -> str:
    """A graphviz node name: `:` would read as a port separator in edge statements."""
    return node_id.replace(":", "__")


def _edge_label(items: list[str]) -> str:
    """Two items a line, so long labels stay narrow."""
    lines = [", ".join(items[i : i + 2]) for i in range(0, len(items), 2)]
    return "\n".join(lines)


_NODE_STYLE = {
    "memory": {
        "shape": "box",
        "style": "rounded,filled",
        "fillcolor": "white",
        "color": "#3a6ea5",
        "penwidth": "1.4",
    },
    "block": {
        "shape": "box3d",
        "style": "filled",
        "fillcolor": "#fffaf0",
        "color": "#8a6d1f",
        "penwidth": "1.2",
    },
    "level": {
        "shape": "cds",
        "style": "filled",
        "fillcolor": "#f5e6b8",
        "color": "#8a6d1f",
        "penwidth": "1.2",
    },
    "empty": {"shape": "plaintext", "fontcolor": "#888888", "fontsize": "10"},
}


def level_graph(checked, *, legend: bool = True):
    """A `graphviz.Digraph` of the spec's levels, memories, blocks and their edges."""
    import graphviz

    picture = describe(checked)
    title = picture.name + (f" — {picture.description}" if picture.description else "")
    dot = graphviz.Digraph(picture.name)
    dot.attr(rankdir="TB", compound="true", newrank="true", nodesep="0.35", ranksep="0.35",
             fontname=FONT, label=title, labelloc="t", fontsize="16",
             margin="0.15")  # fmt: skip
    dot.attr("node", fontname=FONT, fontsize="11", margin="0.12,0.05")
    dot.attr("edge", fontname=FONT, fontsize="10", arrowsize="0.8")

    band_of = {node.id: band for band in picture.bands for node in band.nodes}
    in_context = 0
    previous: list[str] = []
    for band in picture.bands:
        if isinstance(band.every, int):
            fill = _IN_CONTEXT_FILLS[min(in_context, len(_IN_CONTEXT_FILLS) - 1)]
            in_context += 1
        else:
            fill = _STEP_FILL if band.every == "step" else _NEVER_FILL
        with dot.subgraph(name=band.cluster) as cluster:
            cluster.attr(label=band.label, labeljust="l", labelloc="t", style="filled,rounded",
                         fillcolor=fill, color="#9fb3c8", fontsize="13",
                         fontname=f"{FONT} Bold", margin="10")  # fmt: skip
            for node in band.nodes:
                if node.kind == "empty":
                    cluster.node(_gv(node.id), label=node.title, **_NODE_STYLE["empty"])
                else:
                    cluster.node(_gv(node.id), label=_html_label(node.title, node.lines),
                                 **_NODE_STYLE[node.kind])  # fmt: skip
        # Bands stack: every node of a band lies below every node of the band above.
        current = [_gv(node.id) for node in band.nodes]
        for upper in previous:
            for lower in current:
                dot.edge(upper, lower, style="invis")
        previous = current

    for e in picture.edges:
        attrs, _ = EDGE_STYLES[e.kind]
        extra = dict(attrs)
        tail, head = e.tail, e.head
        if e.head_cluster:
            extra["lhead"] = e.head_cluster
        if e.tail_cluster:
            extra["ltail"] = e.tail_cluster
        same_band = band_of.get(tail) is band_of.get(head)
        flow = e.kind in ("generation", "context")
        extra["constraint"] = "true" if same_band and flow and tail != head else "false"
        blocks = [n.id for n in band_of[tail].nodes if n.kind == "block"]
        if e.kind == "nesting" and blocks:
            # Drawn backwards from the memory to the owner's band border, so that dot lays it
            # next to the read edge from the same memory to the band's block (one bundle per
            # memory instead of two crossing paths); the arrow still points at the memory.
            tail, head = e.head, blocks[0]
            extra.pop("lhead", None)
            if e.head_cluster:
                extra["ltail"] = e.head_cluster
            extra.update(lhead=band_of[e.tail].cluster, dir="back",
                         arrowtail=attrs["arrowhead"])  # fmt: skip
        dot.edge(_gv(tail), _gv(head), label=_edge_label(e.items), **extra)

    if legend:
        _add_legend(dot)
        # Below the slowest band, where no edge passes.
        for node in previous:
            dot.edge(node, "legend__table", style="invis")
    return dot


# Line samples for the legend, drawn with text: graphviz cannot draw an edge inside a table.
_LEGEND_SAMPLE = {
    "context": "──────▶",
    "generation": "━━━━━▶",
    "read": "──────▷",
    "nesting": "╌╌╌╌╌╌◇",
    "trains": "┈┈┈┈┈┈●",
}


def _add_legend(dot) -> None:
    rows = []
    for kind, (attrs, text) in EDGE_STYLES.items():
        name, _, rest = text.partition(": ")
        rows.append(
            f'<tr><td align="left"><font color="{attrs["color"]}">{_LEGEND_SAMPLE[kind]}</font></td>'
            f'<td align="left"><font color="{attrs["fontcolor"]}"><b>{html.escape(name)}</b></font>'
            f'</td><td align="left">{html.escape(rest)}</td></tr>'
        )
    table = ('<<table border="0" cellborder="0" cellspacing="1" cellpadding="1">'
             + "".join(rows) + "</table>>")  # fmt: skip
    with dot.subgraph(name="cluster_legend") as lg:
        lg.attr(label="legend", labeljust="l", style="rounded", color="#bbbbbb",
                fontsize="12", fontname=f"{FONT} Bold", margin="6")  # fmt: skip
        lg.node("legend__table", label=table, shape="plaintext", fontsize="10")
