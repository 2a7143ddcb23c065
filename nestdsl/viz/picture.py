"""The level graph as plain data: bands, nodes, edges and block groups (no graphviz here).

`nestdsl.viz.describe` fills a `Picture` from a checked spec; `nestdsl.viz.render` draws it. Tests
read the `Picture` directly, so what the picture says is checked without Graphviz installed.

Node kinds:
- `level`: a level's tag (drawn only where the level is an edge's source);
- `memory`: an associative memory (NL Def. 3), in its level's band;
- `block`: a declared block, folded into one node;
- `op`, `input`: a block's ops and its input, when the block is expanded (`viz --expand`);
- `tensor`: a tensor one memory's read makes for several memories (self-modification, Hope §8),
  drawn once with one edge to each band that learns from it instead of one edge per memory;
- `empty`: the placeholder of a band with nothing in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The edge kinds, in the legend's order.
EDGE_KINDS = ("context", "generation", "read", "nesting", "trains", "data")


def group_cluster(group: str) -> str:
    """The graphviz cluster an expanded block is drawn in."""
    return "cluster_" + group.replace(":", "_")


@dataclass
class VizNode:
    id: str
    kind: str  # level | memory | block | op | input | tensor | empty
    title: str
    lines: list[str] = field(default_factory=list)
    group: str | None = None  # the expanded block the node is drawn in (a nested cluster)


@dataclass
class Band:
    level: str
    every: int | str
    label: str
    nodes: list[VizNode] = field(default_factory=list)

    @property
    def cluster(self) -> str:
        return f"cluster_level_{self.level}"

    def members(self) -> list[str]:
        """The ids of the band's memories, in declaration order."""
        return [n.id for n in self.nodes if n.kind == "memory"]

    def anchor(self, avoid=()) -> str:
        """The memory an edge to or from the whole band is tied to: the one nearest the middle
        (so the edge meets the band's border in the middle), skipping `avoid` where it can
        (the makers of a shared tensor, whose own edges leave from there)."""
        members = self.members()
        middle = (len(members) - 1) / 2
        free = [m for m in members if m not in avoid] or members
        return min(free, key=lambda m: abs(members.index(m) - middle))


@dataclass
class VizEdge:
    kind: str  # one of EDGE_KINDS
    tail: str
    head: str
    items: list[str] = field(default_factory=list)  # label parts, in order, deduplicated
    head_cluster: str | None = None  # the edge points at a whole band or block (graphviz `lhead`)
    tail_cluster: str | None = None  # the edge leaves a whole band (graphviz `ltail`)

    @property
    def label(self) -> str:
        return ", ".join(self.items)

    def add(self, items) -> VizEdge:
        for item in items:
            if item not in self.items:
                self.items.append(item)
        return self


@dataclass
class Picture:
    name: str
    description: str | None
    bands: list[Band]
    edges: list[VizEdge]
    groups: dict[str, str] = field(default_factory=dict)  # expanded block id -> its title
    loose: list[VizNode] = field(default_factory=list)  # shared tensors, drawn between bands

    def nodes(self) -> list[VizNode]:
        return [n for b in self.bands for n in b.nodes] + self.loose

    def node(self, node_id: str) -> VizNode:
        return next(n for n in self.nodes() if n.id == node_id)

    def band_of(self, node_id: str) -> Band | None:
        return next((b for b in self.bands if any(n.id == node_id for n in b.nodes)), None)

    def edges_of(self, kind: str) -> list[VizEdge]:
        return [e for e in self.edges if e.kind == kind]


class EdgeSet:
    """Edges keyed by (kind, tail, head): a second edge between the same two nodes of the same
    kind merges its label items into the first, so parallel edges are never drawn."""

    def __init__(self) -> None:
        self._edges: dict[tuple[str, str, str], VizEdge] = {}

    def add(self, kind: str, tail: str, head: str, items=()) -> VizEdge:
        assert kind in EDGE_KINDS, kind
        found = self._edges.setdefault((kind, tail, head), VizEdge(kind, tail, head))
        return found.add(items)

    def remove(self, edge: VizEdge) -> None:
        del self._edges[(edge.kind, edge.tail, edge.head)]

    def of(self, kind: str) -> list[VizEdge]:
        return [e for e in self._edges.values() if e.kind == kind]

    def all(self) -> list[VizEdge]:
        return list(self._edges.values())
