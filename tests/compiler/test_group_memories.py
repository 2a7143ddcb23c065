"""Grouped memory calls (`group_memories`, issue 13): memories that compute the same function
on different heads run as one kernel call, and the grouped model is the ungrouped one.

Every comparison is float64 between the same weights compiled with and without grouping
(`NESTDSL_GROUP_MEMORIES=0`, the reference path): logits, every final state entry, the
gradient of every parameter, and streaming in pieces.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
import nestdsl.compiler.modules.memory_deep as memory_deep
from nestdsl.compiler import run_passes
from nestdsl.compiler.passes.group_memories import ENV

TOL = 1e-10

# A and B share everything but their values (and their own learned step sizes): one group.
# C differs from them only in its level (chunk 8, not 4), so it runs alone. A and B reset
# every `slow` period, so spans split at resets inside the group's call.
SPEC = """
nestdsl: 1
name: tiny-group
dims: {vocab: 64, d: 16, h: 2, dh: 8}
levels:
  fast: {every: 4}
  slow: {every: 8}
  pretrain: {every: step, optimizer: {kind: adamw}}
memories:
  A:
    structure: {kind: mlp, heads: h, dim: dh, depth: 2, expansion: 2, residual: true}
    level: fast
    keys: k
    values: va
    objective: l2
    rule: {kind: dgd, lr: {kind: learned, init: 0.3, per: head}, step: proximal}
    retention: {kind: l2, forget: forget}
    init: {kind: learned}
    reset: {kind: level, level: slow}
  B:
    structure: {kind: mlp, heads: h, dim: dh, depth: 2, expansion: 2, residual: true}
    level: fast
    keys: k
    values: vb
    objective: l2
    rule: {kind: dgd, lr: {kind: learned, init: 0.3, per: head}, step: proximal}
    retention: {kind: l2, forget: forget}
    init: {kind: learned}
    reset: {kind: level, level: slow}
  C:
    structure: {kind: mlp, heads: h, dim: dh, depth: 2, expansion: 2, residual: true}
    level: slow
    keys: k
    values: vb
    objective: l2
    rule: {kind: dgd, lr: {kind: learned, init: 0.3, per: head}, step: proximal}
    retention: {kind: l2, forget: forget}
    init: {kind: learned}
embed: {vocab: vocab, dim: d}
blocks:
  - nodes:
      k0: {op: linear, in: x, out: [h, dh], then: [l2norm]}
      k: {op: scale, in: k0, by: 1.0}
      va: {op: linear, in: x, out: [h, dh]}
      vb: {op: linear, in: x, out: [h, dh]}
      f: {op: linear, in: x, out: [h], then: [sigmoid]}
      forget: {op: scale, in: f, by: 0.1}
      q: {op: linear, in: x, out: [h, dh]}
      oa: {op: read, memory: A, query: q}
      ob: {op: read, memory: B, query: k}
      oc: {op: read, memory: C, query: q}
      o: {op: add, in: [oa, ob, oc]}
      y: {op: linear, in: o, out: d}
    out: y
"""

HOPE = ["dims.d_model=32", "dims.d_head=8"]


def _checked(grouped: bool, monkeypatch, name="hope", text=None):
    monkeypatch.setenv(ENV, "1" if grouped else "0")
    if text is not None:
        return nestdsl.check_text(text, f"{name}.yaml")
    return nestdsl.load(name, HOPE)


def _pair(monkeypatch, name="hope", text=None):
    """(grouped, ungrouped) models with the same float64 weights."""
    torch.manual_seed(0)
    grouped = nestdsl.compile(_checked(True, monkeypatch, name, text)).double()
    ungrouped = nestdsl.compile(_checked(False, monkeypatch, name, text)).double()
    ungrouped.load_state_dict(grouped.state_dict())
    return grouped, ungrouped


def _loss_and_grads(model, tokens):
    logits, state = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return logits, state, grads


def _assert_same(a, b, tol=TOL):
    assert set(a) == set(b)
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, key
            continue
        assert (a[key] - b[key]).abs().max().item() <= tol, key


def _assert_one_step_equal(grouped, ungrouped, tokens):
    """Logits, every state entry (per member) and every gradient agree; the grouped gradients."""
    la, sa, ga = _loss_and_grads(grouped, tokens)
    lb, sb, gb = _loss_and_grads(ungrouped, tokens)
    assert (la - lb).abs().max().item() <= TOL
    _assert_same(sa, sb)
    _assert_same(ga, gb)
    return ga


def test_hope_groups_the_four_projection_memories():
    plan = nestdsl.load("hope", HOPE).plan
    layer = plan.layers[0]
    assert list(layer.groups) == ["M_k+M_v+M_eta+M_alpha"]
    group = layer.groups["M_k+M_v+M_eta+M_alpha"]
    assert group.heads == 4 * plan.dims["n_heads"]
    assert group.feedback == (("k0", "v0", "eta0", "alpha0"), ("vk", "vv", "ve", "va"))
    assert "level memory" in layer.ungrouped["M_memory"]
    assert group.defer  # every read at the chunk start: one write per chunk
    kinds = [kind for kind, _ in layer.steps]
    assert kinds.count("group") == 1 and kinds.count("feedback_group") == 2
    assert ("memory", "M_k") not in layer.steps and ("feedback", "k0") not in layer.steps


@pytest.mark.parametrize("T", [32, 40], ids=["T32", "T40-partial-chunk"])
def test_hope_grouped_equals_ungrouped(T, monkeypatch):
    grouped, ungrouped = _pair(monkeypatch)
    tokens = torch.randint(0, 256, (2, T + 1))
    ga = _assert_one_step_equal(grouped, ungrouped, tokens)
    assert all(g is not None for g in ga.values())


def test_hope_grouped_streams_in_pieces(monkeypatch):
    """Pieces that end inside a segment and a chunk: the carried state is split per member,
    and a grouped model continues an ungrouped model's state (and back)."""
    grouped, ungrouped = _pair(monkeypatch)
    tokens = torch.randint(0, 256, (1, 37))
    with torch.no_grad():
        whole, end = ungrouped(tokens)
        first, state = grouped(tokens[:, :13])
        second, state = ungrouped(tokens[:, 13:29], state)
        third, state = grouped(tokens[:, 29:], state)
    pieces = torch.cat([first, second, third], 1)
    assert (pieces - whole).abs().max().item() <= TOL
    _assert_same(state, end)


def test_a_hand_written_spec_groups_the_equal_memories_only(monkeypatch):
    plan = _checked(True, monkeypatch, "tiny-group", SPEC).plan
    layer = plan.layers[0]
    assert list(layer.groups) == ["A+B"]
    assert layer.groups["A+B"].reads == (("oa", "ob"),)
    assert not layer.groups["A+B"].defer  # its reads see the chunk's writes
    assert layer.ungrouped == {"C": "level slow, `A`'s is fast"}
    text = run_passes(_checked(True, monkeypatch, "tiny-group", SPEC)).describe()
    assert "memory group `A+B`: one deep_memory call with 4 heads (2 + 2)" in text
    assert "one read with the update: oa, ob" in text
    assert "runs alone: `C` (level slow, `A`'s is fast)" in text
    off = _checked(False, monkeypatch, "tiny-group", SPEC).plan.layers[0]
    assert off.groups == {} and off.ungrouped["A"] == f"grouping is off ({ENV}=0)"


def test_a_hand_written_spec_grouped_equals_ungrouped(monkeypatch):
    grouped, ungrouped = _pair(monkeypatch, "tiny-group", SPEC)
    tokens = torch.randint(0, 64, (2, 22))  # crosses resets (every 8) and ends mid-chunk
    ga = _assert_one_step_equal(grouped, ungrouped, tokens)
    learned = [n for n in ga if ".gates.learned." in n]
    assert len(learned) == 3 and all(ga[n].abs().sum() > 0 for n in learned)
    with torch.no_grad():  # streaming in pieces, grouped
        whole, end = grouped(tokens)
        first, state = grouped(tokens[:, :7])
        second, state = grouped(tokens[:, 7:], state)
    assert (torch.cat([first, second], 1) - whole).abs().max().item() <= TOL
    _assert_same(state, end)


@pytest.mark.parametrize("phi", ["elu1", "{kind: polynomial, degree: 2}"])
def test_members_keep_their_feature_maps(monkeypatch, phi):
    """Each member's keys and queries go through its own feature map before they are joined,
    and each mapped residual member adds its own raw query back (`x + MLP(φ(x))`)."""
    line = f"    feature_map: {phi}\n"
    text = SPEC.replace("    values: va\n", "    values: va\n" + line).replace(
        "    values: vb\n    objective", "    values: vb\n" + line + "    objective", 1
    )
    assert text.count(line) == 2
    assert list(_checked(True, monkeypatch, "tiny-phi", text).plan.layers[0].groups) == ["A+B"]
    grouped, ungrouped = _pair(monkeypatch, "tiny-phi", text)
    tokens = torch.randint(0, 64, (2, 14))
    _assert_one_step_equal(grouped, ungrouped, tokens)


def test_grouping_makes_fewer_kernel_calls(monkeypatch):
    """The differential: the same model, one call for A and B instead of two."""
    calls = []
    kernel = memory_deep.deep_memory

    def counted(*args, **kwargs):
        calls.append(args[2].shape[2])  # the call's heads
        return kernel(*args, **kwargs)

    monkeypatch.setattr(memory_deep, "deep_memory", counted)
    grouped, ungrouped = _pair(monkeypatch, "tiny-group", SPEC)
    tokens = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        grouped(tokens)
        grouped_calls, calls[:] = list(calls), []
        ungrouped(tokens)
    assert sorted(grouped_calls) == [2, 4] and sorted(calls) == [2, 2, 2]


@pytest.mark.parametrize("T, calls", [(32, 2), (40, 3)], ids=["T32", "T40-ends-mid-chunk"])
def test_hope_group_writes_once_per_chunk(T, calls, monkeypatch):
    """Hope's layer runs 8-token segments; the chunk-16 group writes once per chunk (and once
    more for a call that ends inside a chunk), where each member ran once per segment."""
    heads = []
    kernel = memory_deep.deep_memory

    def counted(*args, **kwargs):
        heads.append(args[2].shape[2])
        return kernel(*args, **kwargs)

    monkeypatch.setattr(memory_deep, "deep_memory", counted)
    grouped, ungrouped = _pair(monkeypatch)
    n_heads = nestdsl.load("hope", HOPE).plan.dims["n_heads"]
    tokens = torch.randint(0, 256, (1, T))
    with torch.no_grad():
        grouped(tokens)
        grouped_heads, heads[:] = list(heads), []
        ungrouped(tokens)
    layers, segments = 2, -(-T // 8)
    assert grouped_heads.count(4 * n_heads) == layers * calls
    assert heads.count(n_heads) == layers * segments * 5  # M_k .. M_alpha and M_memory


CYCLE = SPEC.replace("values: vb\n    objective: l2\n    rule: {kind: dgd, lr: {kind: learned, "
                     "init: 0.3, per: head}, step: proximal}\n    retention: {kind: l2, forget: "
                     "forget}\n    init: {kind: learned}\n    reset: {kind: level, level: slow}",
                     "values: oa\n    objective: l2\n    rule: {kind: dgd, lr: {kind: learned, "
                     "init: 0.3, per: head}, step: proximal}\n    retention: {kind: l2, forget: "
                     "forget}\n    init: {kind: learned}\n    reset: {kind: level, level: slow}",
                     1)  # fmt: skip


def test_memories_whose_call_would_need_its_own_output_run_alone(monkeypatch):
    """B learns from A's read (answered with A's update): one call for both cannot exist."""
    assert "values: oa" in CYCLE
    layer = _checked(True, monkeypatch, "tiny-cycle", CYCLE).plan.layers[0]
    assert layer.groups == {}
    assert "step cycle" in layer.ungrouped["A"] and "step cycle" in layer.ungrouped["B"]
    grouped, ungrouped = _pair(monkeypatch, "tiny-cycle", CYCLE)
    tokens = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        assert (grouped(tokens)[0] - ungrouped(tokens)[0]).abs().max().item() == 0.0


def test_members_with_per_channel_gates_group_exactly(monkeypatch):
    """Matrix members with per-channel step sizes (run as one head per value channel) join
    into one call and still equal the ungrouped model."""
    text = SPEC.replace(
        "structure: {kind: mlp, heads: h, dim: dh, depth: 2, expansion: 2, residual: true}",
        "structure: {kind: matrix, heads: h, key_dim: dh, value_dim: dh}",
    ).replace(
        "rule: {kind: dgd, lr: {kind: learned, init: 0.3, per: head}, step: proximal}",
        "rule: {kind: momentum, lr: lrc, momentum: 0.5}",
    ).replace("retention: {kind: l2, forget: forget}", "retention: {kind: kl, forget: forget}")
    text = text.replace("      q: {op: linear, in: x, out: [h, dh]}\n", "      q: {op: linear, in: x, "
                        "out: [h, dh]}\n      lrc: {op: linear, in: x, out: [h, dh], then: [sigmoid]}\n")
    layer = _checked(True, monkeypatch, "tiny-channels", text).plan.layers[0]
    assert list(layer.groups) == ["A+B"]
    assert layer.memories["A"].options.channel_gates == ("lr",)
    grouped, ungrouped = _pair(monkeypatch, "tiny-channels", text)
    tokens = torch.randint(0, 64, (2, 14))
    _assert_one_step_equal(grouped, ungrouped, tokens)
