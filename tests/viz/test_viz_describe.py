"""The level graph as data (`describe`): bands, nodes and edges, read from the spec's IR."""

from __future__ import annotations

import re
from collections import Counter

import pytest

import nestdsl
from nestdsl.errors import UserError
from nestdsl.graph.build import block_name, level_id, memory_id
from nestdsl.viz.describe import describe, tensor_sources
from nestdsl.viz.expand import learned_flows


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
    assert by_level["pretrain"] == ["exp_avg", "exp_avg_sq"]  # AdamW's memories of the gradients
    assert hope.node("memory:M_memory").lines == ["mlp 4 heads x 32, depth 2",
                                                  "l2 · dgd · l2 decay"]  # fmt: skip
    assert hope.node("memory:C_1").lines == ["mlp 128, depth 2", "task · gd"]


def test_block_is_one_compact_node_in_the_outer_band(hope):
    pretrain = next(b for b in hope.bands if b.level == "pretrain")
    blocks = [n for n in pretrain.nodes if n.kind == "block"]
    n_ops = len(nestdsl.load("hope").spec.blocks[0].nodes)
    assert [(n.title, n.lines) for n in blocks] == [("block layer", [f"× 2 · {n_ops} ops"])]
    kinds = {n.kind for n in hope.nodes()}
    assert kinds == {"memory", "block", "level", "tensor"}  # no op nodes unless expanded
    assert edge(hope, "trains", "level:pretrain", "block:layer").items == ["trains"]


def test_shared_tensors_are_one_node_fed_by_their_makers(hope):
    # k, eta and forget are made by M_k, M_eta, M_alpha and learned by all five Titans memories
    [shared] = hope.loose
    assert (shared.kind, shared.title) == ("tensor", "k, eta, forget")
    assert edge(hope, "generation", "memory:M_k", shared.id).items == ["k"]
    assert edge(hope, "generation", "memory:M_eta", shared.id).items == ["eta"]
    assert edge(hope, "generation", "memory:M_alpha", shared.id).items == ["forget"]
    # to the whole band, tied to its middle memory that makes none of them (M_v)
    to_proj = edge(hope, "generation", shared.id, "memory:M_v")
    assert to_proj.head_cluster == "cluster_level_proj"
    assert to_proj.items == ["all 4: keys k", "lr eta", "forget"]
    assert edge(hope, "generation", shared.id, "memory:M_memory").items == [
        "keys k", "lr eta", "forget"]  # fmt: skip
    # each memory makes its own values: a self-loop, not part of the shared node
    for name, values in [("M_k", "vk"), ("M_v", "vv"), ("M_memory", "vm")]:
        mem = f"memory:{name}"
        assert edge(hope, "generation", mem, mem).items == [f"values {values}"]
    # every tensor they learn from is made by a read; the only context is the optimizer's
    assert {e.items[0] for e in hope.edges_of("context")} == {"gradients"}


def test_fan_out_is_merged_no_memory_sends_the_same_label_twice(hope):
    """Issue 14: the four self-modifying memories drew 15 crossing edges (`keys k` four times
    from M_k). A generated tensor now leaves its maker once."""
    sent = Counter((e.tail, e.label) for e in hope.edges_of("generation"))
    assert max(sent.values()) == 1, sent
    assert len(hope.edges_of("generation")) == 10  # 3 into the shared node, 2 out, 5 self-loops


@pytest.mark.parametrize("name", nestdsl.shipped_names())
@pytest.mark.parametrize("expand", [None, "layer"])
def test_no_label_repeats_a_word(name, expand):
    """Issue 14: `forget forget` (a gate tensor named after its role) is said once."""
    picture = describe(nestdsl.load(name), expand=expand)
    for e in picture.edges:
        words = re.findall(r"\w+", e.label)
        assert len(words) == len(set(words)), (e.kind, e.tail, e.head, e.label)


def test_reads_carry_queries_and_order(hope):
    assert edge(hope, "read", "memory:M_memory", "block:layer").items == [
        "v @ chunk start", "q @ read→write"]  # fmt: skip
    # the four projection memories are read alike: one edge from their band
    proj = edge(hope, "read", "memory:M_v", "block:layer")
    assert proj.tail_cluster == "cluster_level_proj"
    assert proj.items == ["all 4: xh, v @ chunk start"]


def test_nesting_edges_for_learned_initial_states(hope):
    nesting = hope.edges_of("nesting")
    assert {e.tail for e in nesting} == {"level:pretrain"}
    grouped = edge(hope, "nesting", "level:pretrain", "memory:M_v")
    assert grouped.head_cluster == "cluster_level_proj" and grouped.items == ["all 4: init"]
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
    assert picture.loose == []  # each tensor feeds one memory: no shared node


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


def test_edges_follow_the_ir_not_a_second_decision():
    """Issue 8: viz reads the IR's `trains` and `nesting` edges instead of deciding owners
    itself. Take the block's `trains` edges away and the picture draws no trains edge."""
    checked = nestdsl.load("transformer")
    g = checked.graph
    trains = [(u, v, k) for u, v, k, d in g.edges(keys=True, data=True) if d["type"] == "trains"]
    assert trains and all(u == level_id("pretrain") for u, _, _ in trains)
    g.remove_edges_from(trains)
    assert describe(checked).edges_of("trains") == []


def test_unknown_block_to_expand_names_the_blocks():
    with pytest.raises(UserError, match=r"no block named `lyr`; its blocks are `layer`"):
        describe(nestdsl.load("hope"), expand="lyr")


def test_band_anchor_is_the_middle_memory_avoiding_makers(hope):
    proj = next(b for b in hope.bands if b.level == "proj")
    assert proj.anchor() == "memory:M_v"  # of M_k, M_v, M_eta, M_alpha
    assert proj.anchor(avoid={"memory:M_v"}) == "memory:M_eta"
    assert proj.anchor(avoid=set(proj.members())) == "memory:M_v"  # nothing left to skip to


@pytest.mark.parametrize("name", nestdsl.shipped_names())
def test_tensor_provenance_agrees_with_the_ir_generation_edges(name):
    """The walk that labels generation edges with their tensors finds exactly the IR's
    `generation` edges (memory -> memory, per role): viz adds labels, not decisions."""
    checked = nestdsl.load(name)
    g, spec = checked.graph, checked.spec
    walked = set()
    for index in range(len(spec.blocks)):
        bname = block_name(spec, index)
        for mem in spec.memories:
            for role, tensor in learned_flows(g, bname, memory_id(mem)):
                producers, _ = tensor_sources(g, bname, tensor)
                walked |= {(memory_id(p), memory_id(mem), role) for p in producers}
    ir = {(u, v, d["role"]) for u, v, d in g.edges(data=True) if d["type"] == "generation"}
    assert walked == ir


def test_outer_optimizers_are_drawn_as_memories_of_the_gradients():
    """NL §4: the optimizer is memories of the gradients. Each outer level's declared memories
    sit in its band and learn from every block it trains (a `gradients` context edge); a
    different optimizer draws different memories."""
    adamw = describe(nestdsl.load("transformer"))
    sgd = describe(
        nestdsl.load("transformer", overrides=["levels.pretrain.optimizer.kind=sgd_momentum"])
    )

    def drawn(picture):
        band = next(b for b in picture.bands if b.level == "pretrain")
        return [n.title for n in band.nodes if n.id.startswith("optimizer:")]

    assert drawn(adamw) == ["exp_avg", "exp_avg_sq"]
    assert len(drawn(sgd)) == 1 and drawn(sgd) != drawn(adamw)
    grads = [(e.tail, e.head) for e in adamw.edges_of("context") if e.items == ["gradients"]]
    assert grads == [("block:layer", "optimizer:pretrain/exp_avg"),
                     ("block:layer", "optimizer:pretrain/exp_avg_sq")]  # fmt: skip
