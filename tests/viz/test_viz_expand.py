"""`--expand BLOCK`: a block drawn op by op, with data, read and context edges from the IR."""

from __future__ import annotations

import re

import pytest

import nestdsl
from nestdsl.graph.build import memory_id, op_id
from nestdsl.viz.describe import describe
from nestdsl.viz.render import draw, gv

SPECS = ["hope", "titans-mac", "transformer", "gated-deltanet"]


def dot_edges(source: str) -> list[tuple[str, str, str]]:
    """(tail, head, attributes) of every drawn (visible) edge in graphviz source."""
    found = re.findall(r"^\t(\S+) -> (\S+) \[(.*)\]$", source, flags=re.M)
    return [(t, h, a) for t, h, a in found if "style=invis" not in a]


@pytest.mark.parametrize("name", SPECS)
def test_one_graphviz_node_per_block_op_with_data_edges(name):
    checked = nestdsl.load(name)
    block = checked.spec.blocks[0]
    picture = describe(checked, expand="layer")
    ops = [n for n in picture.nodes() if n.kind == "op"]
    assert [n.title for n in ops] == list(block.nodes)
    assert all(n.group == "block:layer" for n in ops)
    assert not any(n.kind == "block" for n in picture.nodes())  # folded node replaced

    source = draw(picture).source
    for op in block.nodes:
        assert len(re.findall(rf"^\t\t\t{re.escape(gv(op_id('layer', op)))} \[", source,
                              flags=re.M)) == 1, op  # fmt: skip
    data = {(t, h) for t, h, a in dot_edges(source) if 'color="#777777"' in a}
    # every op input is a data edge from the op that makes it (or from the block input)
    for name_ in block.nodes:
        for source_name in checked.graph.predecessors(f"op:layer/{name_}"):
            if source_name.startswith("tensor:"):
                tensor = source_name.split("/", 1)[1]
                tail = "input:layer" if tensor == block.input else op_id("layer", tensor)
                assert (gv(tail), gv(op_id("layer", name_))) in data, (tensor, name_)


def test_hope_expanded_reads_and_learned_tensors():
    picture = describe(nestdsl.load("hope"), expand="layer")
    edges = {(e.kind, e.tail, e.head): e for e in picture.edges}
    assert ("read", memory_id("M_memory"), op_id("layer", "o")) in edges
    assert ("read", memory_id("C_2"), op_id("layer", "c2")) in edges
    # k is learned as keys by the four proj memories (one edge to their band) and M_memory
    to_band = edges[("context", op_id("layer", "k"), memory_id("M_v"))]
    assert to_band.head_cluster == "cluster_level_proj" and to_band.items == ["all 4: keys"]
    assert edges[("context", op_id("layer", "k"), memory_id("M_memory"))].items == ["keys"]
    assert edges[("context", op_id("layer", "vm"), memory_id("M_memory"))].items == ["values"]
    assert picture.edges_of("generation") == []  # the ops between read and write show it
    trains = edges[("trains", "level:pretrain", "input:layer")]
    assert trains.head_cluster == "cluster_block_layer"
    assert picture.node(op_id("layer", "x4")).lines == ["+", "block output"]


@pytest.mark.parametrize("name", nestdsl.shipped_names())
@pytest.mark.parametrize("expand", [None, "layer"])
def test_at_most_one_drawn_edge_per_pair_and_kind(name, expand):
    """Issue 14: parallel edges are merged into one edge with all the labels."""
    source = draw(describe(nestdsl.load(name), expand=expand)).source
    seen = set()
    for tail, head, attrs in dot_edges(source):
        colour = re.search(r'color="(#\w+)"', attrs).group(1)
        assert (tail, head, colour) not in seen, (tail, head, attrs)
        seen.add((tail, head, colour))


def test_expanded_legend_adds_the_data_row():
    compact = draw(describe(nestdsl.load("transformer"))).source
    expanded = draw(describe(nestdsl.load("transformer"), expand="layer")).source
    assert "block tensor consumed by an op" not in compact
    assert "block tensor consumed by an op" in expanded
