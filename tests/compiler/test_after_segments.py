"""Steps after the segments (schedule_levels `_after_segments`, issue 13): a segmented layer runs
the steps that no step inside its segments needs (per-position ops, memories without feedback
reads) once over the whole span, and gives the numbers of running every step per segment.

The reference is the same spec compiled with every step inside the segments
(`NESTDSL_AFTER_SEGMENTS=0`). Compared in float64: logits, every state entry, every gradient,
and streaming in uneven pieces.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler.passes.schedule_levels import AFTER_ENV

TOL = 1e-10
SMALL = ["dims.d_model=32", "dims.n_heads=2", "dims.d_head=16", "dims.d_ff=48"]


def _pair(name, monkeypatch):
    """(after the segments, every step inside them) with the same float64 weights."""
    torch.manual_seed(0)
    fast = nestdsl.compile(nestdsl.load(name, SMALL)).double()
    monkeypatch.setenv(AFTER_ENV, "0")
    slow = nestdsl.compile(nestdsl.load(name, SMALL)).double()
    assert slow.layers[0].after_segments == [] and fast.layers[0].after_segments
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def _run(model, tokens, pieces):
    """Logits and final state of `tokens` in pieces of the given lengths, and the gradients of
    the whole loss."""
    model.zero_grad()
    state, outs, start = None, [], 0
    for n in pieces:
        logits, state = model(tokens[:, start : start + n], state)
        outs.append(logits)
        start += n
    logits = torch.cat(outs, dim=1)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits, state, grads


def test_the_steps_after_the_segments_are_the_ones_no_segment_needs():
    mac = nestdsl.load("titans-mac").plan.layers[0]
    assert {n for _, n in mac.after_segments} == {"mn", "mg", "o", "x1", "h2", "fa", "fb",
                                                   "fab", "f", "x2"}  # fmt: skip
    assert set(mac.kept_from_segments) == {"m", "x", "y"}
    hope = nestdsl.load("hope").plan.layers[0]
    # Hope's continuum memory runs after the segments; its main memory, which feeds back, inside.
    assert {("memory", "C_1"), ("memory", "C_2"), ("memory", "C_3")} <= hope.after_segments
    assert not any(s[1] in ("M_memory", "o", "q", "xh") for s in hope.after_segments)
    # an unsegmented layer has nothing to move
    assert nestdsl.load("titans-lmm").plan.layers[0].after_segments == frozenset()


@pytest.mark.parametrize("name", ["titans-mac", "hope"])
@pytest.mark.parametrize("pieces", [[40], [13, 27]], ids=["one-pass", "streamed"])
def test_after_the_segments_equals_every_step_in_them(name, pieces, monkeypatch):
    fast, slow = _pair(name, monkeypatch)
    tokens = torch.randint(0, 256, (2, sum(pieces)))
    (la, sa, ga), (lb, sb, gb) = _run(fast, tokens, pieces), _run(slow, tokens, pieces)
    assert (la - lb).abs().max().item() <= TOL
    assert set(sa) == set(sb) and set(ga) == set(gb)
    for key in sa:
        if isinstance(sa[key], torch.Tensor) and sa[key].is_floating_point():
            assert (sa[key] - sb[key]).abs().max().item() <= TOL, key
    for key in ga:
        assert (ga[key] - gb[key]).abs().max().item() <= TOL, key


def test_the_feed_forward_runs_once_per_call_not_once_per_segment(monkeypatch):
    fast, slow = _pair("titans-mac", monkeypatch)
    calls = {"fast": 0, "slow": 0}
    for label, model in (("fast", fast), ("slow", slow)):
        def count(*_, label=label):
            calls[label] += 1
        model.layers[0].ops["f"].register_forward_hook(count)
        with torch.no_grad():  # one pass (training would run recomputed spans)
            model(torch.randint(0, 256, (1, 64)))
    assert calls == {"fast": 1, "slow": 64 // fast.layers[0].segment}
