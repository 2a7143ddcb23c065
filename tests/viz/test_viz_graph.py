"""The level graph: which bands, nodes and edges a spec gives (`describe`), and how they draw."""

from __future__ import annotations

import re

import pytest

import nestdsl
from nestdsl.viz.level_graph import EDGE_STYLES, describe, level_graph


@pytest.fixture(scope="module")
def hope():
    return describe(nestdsl.load("hope"))


def edge(picture, kind, tail, head):
    found = [e for e in picture.edges if (e.kind, e.tail, e.head) == (kind, tail, head)]
    assert len(found) == 1, f"no single {kind} edge {tail} -> {head}: {picture.edges}"
    return found[0]


def test_bands_from_fastest_to_slowest_with_periods(hope):
    assert [b.label for b in hope.bands] == [
        "memory · every 8",
        "proj · every 16",
        "cms_1 · every 16",  # same period as proj: declaration order
        "cms_2 · every 32",
        "cms_3 · every 64",
        "pretrain · every optimizer step",
    ]


def test_memories_sit_in_their_level_band_with_structure_and_learning(hope):
    by_level = {b.level: [n.title for n in b.nodes if n.kind == "memory"] for b in hope.bands}
    assert by_level["proj"] == ["M_k", "M_v", "M_eta", "M_alpha"]
    assert by_level["memory"] == ["M_memory"]
    assert by_level["pretrain"] == []
    assert hope.node("memory:M_memory").lines == ["mlp 4 heads x 32, depth 2",
                                                  "l2 · dgd · l2 decay"]  # fmt: skip
    assert hope.node("memory:C_1").lines == ["mlp 128, depth 2", "task · gd"]


def test_block_is_one_compact_node_in_the_outer_band(hope):
    pretrain = next(b for b in hope.bands if b.level == "pretrain")
    blocks = [n for n in pretrain.nodes if n.kind == "block"]
    n_ops = len(nestdsl.load("hope").spec.blocks[0].nodes)
    assert [(n.title, n.lines) for n in blocks] == [("block layer", [f"× 2 · {n_ops} ops"])]
    kinds = {n.kind for b in hope.bands for n in b.nodes}
    assert kinds == {"memory", "block", "level"}  # no op or tensor nodes
    assert edge(hope, "trains", "level:pretrain", "block:layer").items == ["trains"]


def test_self_modification_is_generation_edges_labelled_with_tensors(hope):
    assert edge(hope, "generation", "memory:M_k", "memory:M_memory").items == ["keys k"]
    assert edge(hope, "generation", "memory:M_eta", "memory:M_memory").items == ["lr eta"]
    assert edge(hope, "generation", "memory:M_memory", "memory:M_memory").items == ["values vm"]
    assert edge(hope, "generation", "memory:M_k", "memory:M_k").items == ["keys k", "values vk"]
    # every context tensor of hope is produced by a memory read: no plain context flow
    assert hope.edges_of("context") == []


def test_reads_carry_queries_and_order(hope):
    assert edge(hope, "read", "memory:M_memory", "block:layer").items == [
        "v @ chunk start", "q @ read→write"]  # fmt: skip
    # the four projection memories are read alike: one edge from their band
    proj = edge(hope, "read", "memory:M_k", "block:layer")
    assert proj.tail_cluster == "cluster_level_proj"
    assert proj.items == ["all 4: xh, v @ chunk start"]


def test_nesting_edges_for_learned_initial_states(hope):
    nesting = hope.edges_of("nesting")
    assert {e.tail for e in nesting} == {"level:pretrain"}
    grouped = edge(hope, "nesting", "level:pretrain", "memory:M_k")
    assert grouped.head_cluster == "cluster_level_proj" and grouped.items == ["init (all 4)"]
    assert edge(hope, "nesting", "level:pretrain", "memory:C_3").items == ["init"]


def test_titans_mac_context_generation_and_reset():
    picture = describe(nestdsl.load("titans-mac"))
    # attention learns from the segment (the block) and from the retrieved memory tokens
    assert edge(picture, "context", "block:layer", "memory:A").items == ["keys ak", "values av"]
    assert edge(picture, "generation", "memory:M", "memory:A").items == ["keys ak", "values av"]
    assert edge(picture, "generation", "memory:A", "memory:M").items == [
        "keys km", "values vm", "lr theta", "momentum eta", "forget alpha"]  # fmt: skip
    assert edge(picture, "nesting", "level:segment", "memory:A").items == ["reset"]
    assert edge(picture, "nesting", "level:pretrain", "memory:M").items == ["init"]


def test_transformer_has_plain_context_flow():
    picture = describe(nestdsl.load("transformer"))
    assert edge(picture, "context", "block:layer", "memory:A").items == ["keys k", "values v"]
    assert edge(picture, "read", "memory:A", "block:layer").items == ["q @ write→read"]
    assert picture.edges_of("generation") == []
    assert picture.edges_of("nesting") == []


def test_frozen_level_band_and_block():
    checked = nestdsl.load("transformer", ["levels.frozen={every: never}",
                                           "blocks.0.level=frozen"])  # fmt: skip
    picture = describe(checked)
    assert [b.label for b in picture.bands] == [
        "token · every 1", "pretrain · every optimizer step", "frozen · never"]  # fmt: skip
    assert edge(picture, "trains", "level:frozen", "block:layer").items == ["frozen"]


def test_dot_source_has_bands_legend_and_styles():
    source = level_graph(nestdsl.load("hope")).source
    assert source.startswith("digraph")
    clusters = re.findall(r"subgraph (cluster_\w+)", source)
    assert clusters == [f"cluster_level_{n}" for n in
                        ("memory", "proj", "cms_1", "cms_2", "cms_3", "pretrain")
                        ] + ["cluster_legend"]  # fmt: skip
    assert "op__" not in source and "tensor__" not in source
    for kind, (_, text) in EDGE_STYLES.items():
        assert text.split(":")[0] in source, kind
    styles = {tuple(sorted(attrs.items())) for attrs, _ in EDGE_STYLES.values()}
    assert len(styles) == len(EDGE_STYLES)  # distinct styles
    assert "legend" not in level_graph(nestdsl.load("hope"), legend=False).source
