"""Draw a described level graph (`nestdsl.viz.describe.Picture`) with graphviz's `dot`.

Levels are horizontal bands from the fastest clock (top) to the slowest (bottom); a memory sits
in the band of the level that updates it (NL §3: levels ordered by update frequency). Invisible
edges stack the bands; the drawn edges never move a band, so the picture reads top to bottom as
fast to slow whatever the wiring. Tensors shared by several memories (Hope's k, eta, alpha) sit
above the fastest band they touch, so all their edges run downward (the makers' edges are drawn
with reversed arrows). An expanded block (`--expand`) is a nested
cluster whose `data` edges lay its ops out top to bottom.

Nothing here decides what is drawn: `describe` did. This module picks shapes, colours and
graphviz layout hints.
"""

from __future__ import annotations

import html

from nestdsl.viz.picture import Picture, VizEdge, group_cluster

FONT = "Helvetica"

# kind -> (graphviz edge attributes, legend text). The order is the legend's.
EDGE_STYLES: dict[str, tuple[dict[str, str], str]] = {
    "context": (
        {"color": "#1f77b4", "fontcolor": "#1f5f94", "style": "solid", "penwidth": "1.6",
         "arrowhead": "normal"},
        "context flow: block tensors a memory learns from",
    ),
    "generation": (
        {"color": "#d62728", "fontcolor": "#b01818", "style": "bold", "penwidth": "2.2",
         "arrowhead": "vee"},
        "generation: a memory's read makes another's keys/values/gates",
    ),
    "read": (
        {"color": "#2ca02c", "fontcolor": "#1d7a1d", "style": "solid", "penwidth": "1.4",
         "arrowhead": "onormal"},
        "read: queries, and which state answers",
    ),
    "nesting": (
        {"color": "#9467bd", "fontcolor": "#6a3d9a", "style": "dashed", "penwidth": "1.5",
         "arrowhead": "odiamond"},
        "nesting: a slower level owns the initial state / reset",
    ),
    "trains": (
        {"color": "#444444", "fontcolor": "#333333", "style": "dotted", "penwidth": "2.0",
         "arrowhead": "dot"},
        "trains: the level whose optimizer trains the parameters",
    ),
    "data": (
        {"color": "#777777", "fontcolor": "#555555", "style": "solid", "penwidth": "1.0",
         "arrowhead": "normal"},
        "data: a block tensor consumed by an op (expanded block)",
    ),
}  # fmt: skip

# Line samples for the legend, drawn with text: graphviz cannot draw an edge inside a table.
_LEGEND_SAMPLE = {
    "context": "──────▶",
    "generation": "━━━━━▶",
    "read": "──────▷",
    "nesting": "╌╌╌╌╌╌◇",
    "trains": "┈┈┈┈┈┈●",
    "data": "──────▶",
}

# Band fill: in-context levels get lighter blues as they slow down; outer and frozen levels
# have their own colours.
_IN_CONTEXT_FILLS = ["#dcecfb", "#e3f0fb", "#e9f3fc", "#eff6fd", "#f3f8fd", "#f6fafe"]
_STEP_FILL = "#fdf3d8"
_NEVER_FILL = "#eeeeee"

_NODE_STYLE = {
    "memory": {"shape": "box", "style": "rounded,filled", "fillcolor": "white",
               "color": "#3a6ea5", "penwidth": "1.4"},
    "block": {"shape": "box3d", "style": "filled", "fillcolor": "#fffaf0", "color": "#8a6d1f",
              "penwidth": "1.2"},
    "level": {"shape": "cds", "style": "filled", "fillcolor": "#f5e6b8", "color": "#8a6d1f",
              "penwidth": "1.2"},
    "tensor": {"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#fdecec",
               "color": "#d62728", "penwidth": "1.4"},
    "op": {"shape": "box", "style": "filled", "fillcolor": "white", "color": "#8a6d1f",
           "penwidth": "0.8", "margin": "0.06,0.02"},
    "input": {"shape": "invhouse", "style": "filled", "fillcolor": "#f5e6b8",
              "color": "#8a6d1f", "penwidth": "1.0"},
    "empty": {"shape": "plaintext", "fontcolor": "#888888", "fontsize": "10"},
}  # fmt: skip


def gv(node_id: str) -> str:
    """A graphviz node name: `:` would read as a port separator in edge statements."""
    return node_id.replace(":", "__").replace("/", "__").replace("+", "_")


def _html_label(title: str, lines: list[str], *, title_size: int = 13, line_size: int = 10,
                color: str = "#444444") -> str:  # fmt: skip
    rows = [f'<font point-size="{title_size}"><b>{html.escape(title)}</b></font>']
    rows += [f'<font point-size="{line_size}" color="{color}">{html.escape(t)}</font>'
             for t in lines]  # fmt: skip
    return "<" + "<br/>".join(rows) + ">"


def edge_label(items: list[str]) -> str:
    """Two items a line, so long labels stay narrow."""
    return "\n".join(", ".join(items[i : i + 2]) for i in range(0, len(items), 2))


def draw(picture: Picture, *, legend: bool = True):
    """A `graphviz.Digraph` of the picture."""
    import graphviz

    title = picture.name + (f" — {picture.description}" if picture.description else "")
    dot = graphviz.Digraph(picture.name)
    dot.attr(rankdir="TB", compound="true", newrank="true", nodesep="0.35", ranksep="0.35",
             fontname=FONT, label=title, labelloc="t", fontsize="16", margin="0.15")  # fmt: skip
    dot.attr("node", fontname=FONT, fontsize="11", margin="0.12,0.05")
    dot.attr("edge", fontname=FONT, fontsize="10", arrowsize="0.8")

    rows = _bands(dot, picture)
    _loose(dot, picture, rows)
    band_of = {n.id: b for b in picture.bands for n in b.nodes}
    grouped = {n.id for n in picture.nodes() if n.group is not None}
    loose = {n.id for n in picture.loose}
    for e in picture.edges:
        _edge(dot, e, band_of, grouped, loose)
    kinds = {e.kind for e in picture.edges}
    if legend:
        _legend(dot, [k for k in EDGE_STYLES if k != "data" or "data" in kinds])
        # Below the slowest band, where no edge passes (and below an expanded block's output).
        tails = {e.tail for e in picture.edges}
        sinks = dict.fromkeys(gv(e.head) for e in picture.edges
                              if e.kind == "data" and e.head not in tails)  # fmt: skip
        for node in rows[-1] + list(sinks):
            dot.edge(node, "legend__table", style="invis")
    return dot


def _bands(dot, picture: Picture) -> list[list[str]]:
    """One filled cluster per band, stacked by invisible edges; returns each band's node names."""
    rows: list[list[str]] = []
    in_context = 0
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
                if node.group is None:
                    _node(cluster, node)
            for group in dict.fromkeys(n.group for n in band.nodes if n.group):
                with cluster.subgraph(name=group_cluster(group)) as box:
                    box.attr(label=picture.groups[group], style="filled,rounded",
                             fillcolor="#fffaf0", color="#8a6d1f", fontsize="12")  # fmt: skip
                    for node in band.nodes:
                        if node.group == group:
                            _node(box, node)
        # Every node of a band lies below every node of the band above. An expanded block is
        # left free: its data edges run from the top of the picture down beside the bands, so
        # its reads and context edges go sideways to the memories instead of looping round.
        current = [gv(n.id) for n in band.nodes if n.group is None]
        for upper in rows[-1] if rows else []:
            for lower in current:
                dot.edge(upper, lower, style="invis")
        rows.append(current)
    return rows


def _node(graph, node) -> None:
    if node.kind == "empty":
        graph.node(gv(node.id), label=node.title, **_NODE_STYLE["empty"])
    elif node.kind == "op":
        label = _html_label(node.title, node.lines, title_size=11, line_size=9)
        graph.node(gv(node.id), label=label, **_NODE_STYLE["op"])
    else:
        graph.node(gv(node.id), label=_html_label(node.title, node.lines),
                   **_NODE_STYLE[node.kind])  # fmt: skip


def _loose(dot, picture: Picture, rows: list[list[str]]) -> None:
    """Shared tensors: above the fastest band they touch, so that all their edges run down."""
    index = {n.id: i for i, b in enumerate(picture.bands) for n in b.nodes}
    for node in picture.loose:
        _node(dot, node)
        ends = [e.tail if e.head == node.id else e.head for e in picture.edges
                if node.id in (e.tail, e.head)]  # fmt: skip
        row = min((index[n] for n in ends if n in index), default=0)
        # Tied to the band below and to every band it touches, so dot centres it over them.
        below = [*rows[row], *(r for i in {index[n] for n in ends if n in index} for r in rows[i])]
        for lower in dict.fromkeys(below):
            dot.edge(gv(node.id), lower, style="invis")
        for upper in rows[row - 1] if row > 0 else []:
            dot.edge(upper, gv(node.id), style="invis")


def _edge(dot, e: VizEdge, band_of, grouped: set[str], loose: set[str]) -> None:
    attrs, _ = EDGE_STYLES[e.kind]
    extra = dict(attrs)
    tail, head = e.tail, e.head
    if e.head_cluster:
        extra["lhead"] = e.head_cluster
    if e.tail_cluster:
        extra["ltail"] = e.tail_cluster
    same_band = band_of.get(tail) is not None and band_of.get(tail) is band_of.get(head)
    flow = e.kind in ("generation", "context") and same_band and tail != head
    # In an expanded block a read ranks its op below the memory, so each read op sits level
    # with its memory's band and the edges stay short.
    ranks = flow or e.kind == "data" or (e.kind == "read" and head in grouped)
    extra["constraint"] = "true" if ranks else "false"
    if e.head in loose:
        # A maker's edge into a shared tensor above it: drawn down from the tensor with the
        # arrow reversed, so the tensor's edges all leave it downward and never cross it.
        extra.update(dir="back", arrowtail=attrs["arrowhead"])
        dot.edge(gv(head), gv(tail), label=edge_label(e.items), **extra)
        return
    if e.kind == "context" and tail in grouped:
        # An op feeding a memory is drawn from the memory down to the op, arrow reversed: dot
        # routes downward edges cleanly, while upward ones loop round the whole block.
        extra.update(dir="back", arrowtail=attrs["arrowhead"], constraint="true")
        if e.head_cluster:  # to a whole band: ranking by its first memory would tilt the band
            extra.update(ltail=extra.pop("lhead"), constraint="false")
        dot.edge(gv(head), gv(tail), label=edge_label(e.items), **extra)
        return
    blocks = [n.id for n in band_of[tail].nodes if n.kind == "block"] if tail in band_of else []
    if e.kind == "nesting" and blocks:
        # Drawn backwards from the memory to the owner's band border, so that dot lays it next
        # to the read edge from the same memory to the band's block (one bundle per memory
        # instead of two crossing paths); the arrow still points at the memory.
        tail, head = e.head, blocks[0]
        extra.pop("lhead", None)
        if e.head_cluster:
            extra["ltail"] = e.head_cluster
        extra.update(lhead=band_of[e.tail].cluster, dir="back", arrowtail=attrs["arrowhead"])
    if e.kind == "trains" and e.head_cluster:
        # Into an expanded block: the spline is clipped at the block's border, but dot places a
        # middle label on the unclipped path (among the ops), so the label goes at the level.
        dot.edge(gv(tail), gv(head), taillabel=edge_label(e.items), labeldistance="3", **extra)
        return
    dot.edge(gv(tail), gv(head), label=edge_label(e.items), **extra)


def _legend(dot, kinds: list[str]) -> None:
    rows = []
    for kind in kinds:
        attrs, text = EDGE_STYLES[kind]
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


def level_graph(checked, *, legend: bool = True, expand: str | None = None):
    """A `graphviz.Digraph` of a checked spec: `draw(describe(checked, expand))`."""
    from nestdsl.viz.describe import describe

    return draw(describe(checked, expand), legend=legend)
