"""In-context memories stay finite over a 16,384-token stream (issue: deep memories).

Each shipped spec (widths reduced, the levels and rules its own) reads the embedded corpus in
pieces of 1,024 tokens, carrying its state: every memory keeps updating on its clock for 16,384
tokens, at inference, with no reset."""

from __future__ import annotations

import pytest
import torch

import nestdsl
from nestdsl.data import load_corpus

from .helpers import load_small

TOKENS, PIECE = 16_384, 1_024


SLOW = {"hope"}  # five sequential self-modifying memories and CMS gradients: ~1 min on 2 cores


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in nestdsl.shipped_names()])  # fmt: skip
def test_state_stays_finite_over_a_long_stream(name):
    checked = load_small(name)
    torch.manual_seed(0)
    model = nestdsl.compile(checked).eval()
    data = torch.tensor(list(load_corpus()[:TOKENS]), dtype=torch.long).unsqueeze(0)
    state = None
    with torch.no_grad():
        for start in range(0, TOKENS, PIECE):
            logits, state = model(data[:, start : start + PIECE], state)
            assert torch.isfinite(logits).all(), f"{name}: non-finite logits at {start}"
    assert int(state["pos"]) == TOKENS
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"{name}: non-finite state {bad[:3]}"
    # the cache of attention grows with the context; every other memory has a fixed size
    sizes = {k: v.numel() for k, v in state.items() if ".k" not in k and ".v" not in k}
    assert all(n < 10**6 for n in sizes.values())
