"""Drawing a described picture: clusters, styles, legend (graphviz source; no `dot` needed)."""

from __future__ import annotations

import re

import nestdsl
from nestdsl.viz.render import EDGE_STYLES, level_graph


def test_dot_source_has_bands_legend_and_styles():
    source = level_graph(nestdsl.load("hope")).source
    assert source.startswith("digraph")
    clusters = re.findall(r"subgraph (cluster_\w+)", source)
    assert clusters == [f"cluster_level_{n}" for n in
                        ("memory", "proj", "cms_1", "cms_2", "cms_3", "pretrain")
                        ] + ["cluster_legend"]  # fmt: skip
    assert "op__" not in source  # the block is folded
    for kind, (_, text) in EDGE_STYLES.items():
        if kind != "data":
            assert text.split(":")[0] in source, kind
    styles = {tuple(sorted(attrs.items())) for attrs, _ in EDGE_STYLES.values()}
    assert len(styles) == len(EDGE_STYLES)  # distinct styles
    assert "legend" not in level_graph(nestdsl.load("hope"), legend=False).source


def test_shared_tensor_node_sits_outside_the_bands():
    source = level_graph(nestdsl.load("hope")).source
    # drawn at the top level of the graph (one tab), not inside a band cluster
    assert re.search(r"^\ttensors__layer__k_eta_forget \[", source, flags=re.M)


def test_expanded_block_is_a_cluster_inside_its_band():
    source = level_graph(nestdsl.load("hope"), expand="layer").source
    clusters = re.findall(r"subgraph (cluster_\w+)", source)
    assert clusters.index("cluster_block_layer") == clusters.index("cluster_level_pretrain") + 1
    assert 'label="block layer × 2"' in source


def test_shared_tensor_edges_all_leave_it_downward():
    """The makers' edges into hope's shared tensor are drawn from it with reversed arrows, so
    the node sits above everything it touches and no edge climbs into it."""
    source = level_graph(nestdsl.load("hope")).source
    hub = "tensors__layer__k_eta_forget"
    touching = [line for line in source.splitlines() if "->" in line and hub in line]
    drawn = [line for line in touching if "style=invis" not in line]
    assert len(drawn) == 5  # from M_k, M_eta, M_alpha; to M_memory and to the proj band
    assert all(line.strip().startswith(hub) for line in touching), touching
    makers = [line for line in drawn if "dir=back" in line]
    assert sorted(re.search(r"-> (\S+)", m).group(1) for m in makers) == [
        "memory__M_alpha", "memory__M_eta", "memory__M_k"]  # fmt: skip
