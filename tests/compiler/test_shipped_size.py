"""Every shipped spec at its shipped size (not the reduced widths of the other tests) reads real
text with fresh weights and keeps every output and in-context state finite and bounded.

Deep memories can be stable at 32 wide and blow up at 128 (Hope did, with a larger inner step
size: docs/architectures.md), so this runs each spec as `nestdsl train` would first see it."""

from __future__ import annotations

import pytest
import torch

import nestdsl
from nestdsl.data import load_corpus

BOUND = 1e3  # far above what a stable memory holds (about 3 here), far below an overflow


@pytest.fixture(scope="module")
def batches():
    corpus = torch.tensor(list(load_corpus()[:400_000]), dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, len(corpus) - 129, (3, 8), generator=g)
    return [torch.stack([corpus[i : i + 128] for i in row]) for row in starts]


@pytest.mark.parametrize("name", nestdsl.shipped_names())
def test_states_stay_bounded_at_the_shipped_size(name, batches):
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load(name))
    for tokens in batches:
        with torch.no_grad():
            logits, state = model(tokens)
        assert torch.isfinite(logits).all(), name
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point():
                assert value.abs().max() < BOUND, f"{name}: state {key} reached {value.abs().max():.3g}"
