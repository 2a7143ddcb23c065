"""`reset:` is lowered: what a memory keeps from one sequence to the next."""

from __future__ import annotations

import pytest
import torch

import nestdsl
from nestdsl.errors import SpecError
from tests.compiler.helpers import small_overrides


def _model(reset: str):
    checked = nestdsl.load("deltanet", [*small_overrides("deltanet"), f"memories.M.reset={reset}"])
    torch.manual_seed(0)
    return nestdsl.compile(checked).double()


def test_reset_never_starts_the_next_sequence_from_the_last_state():
    model = _model("never")
    first, second = torch.randint(0, 256, (2, 1, 23))
    _, state = model(first)
    kept = model.carried_over(state)
    assert kept and all(".M." in k for k in kept) and "pos" not in kept
    carried, _ = model(second, kept)
    fresh, _ = model(second)
    assert not torch.allclose(carried, fresh)
    # Oracle: the same model whose memory starts from the first sequence's final state.
    (S,) = kept.values()  # [1, H, K, V]
    for layer in model.layers:
        layer.memories["M"].initial = S[0].clone()
    assert torch.allclose(model(second)[0], carried, rtol=0, atol=1e-12)


def test_reset_sequence_keeps_nothing():
    model = _model("sequence")
    _, state = model(torch.randint(0, 256, (1, 9)))
    assert model.carried_over(state) == {}


def test_a_full_cache_that_never_resets_is_rejected():
    with pytest.raises(SpecError) as err:
        nestdsl.load("transformer", ["memories.A.reset=never"])
    assert "grows without bound" in str(err.value)
