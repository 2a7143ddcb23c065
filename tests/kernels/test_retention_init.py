"""Random initial states are drawn as the weights a memory computes with (retention.state_for).

An lq memory (Moneta) computes with `A / ||A||_q^(q-2)`; drawn as a state, its first layer's
weights started at 0.29x the variance-preserving scale. `state_for` inverts the map, so every
retention starts at the same visible weights.
"""

import math

import pytest
import torch

import nestdsl
from nestdsl.kernels.deep_memory import state_for, visible_weights


@pytest.mark.parametrize("q", [2.0, 2.5, 4.0, 6.0])
def test_the_state_maps_back_to_the_weights_it_was_made_from(q):
    W = torch.randn(3, 2, 16, 8, dtype=torch.float64) / math.sqrt(8)  # at an init's scale
    # exact but for the map's eps (1e-6 beside ||A||_q^q, here about 0.01 to 1)
    assert torch.allclose(visible_weights(state_for(W, "lq", q), "lq", q), W, rtol=1e-3, atol=1e-6)


def test_l2_states_are_their_weights_and_q3_has_no_inverse():
    W = torch.randn(2, 4, 4, dtype=torch.float64)
    assert state_for(W, "l2") is W and state_for(W, "kl") is W
    # q = 3 maps every state to a unit 3-norm: no state has these weights, W stays the state.
    assert state_for(W, "lq", 3.0) is W
    assert visible_weights(W, "lq", 3.0).abs().pow(3).sum((-2, -1)).allclose(
        torch.ones(2, dtype=torch.float64))


def test_moneta_starts_at_variance_preserving_weights():
    model = nestdsl.compile(nestdsl.load("moneta"))
    memory = model.layers[0].memories["M"]
    for A, W in zip(memory.initial, memory.visible(list(memory.initial)), strict=True):
        fan_in = W.shape[-1]
        assert W.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.1)
        # the state itself is not at that scale (the map is not the identity)
        assert abs(A.std().item() * math.sqrt(fan_in) - 1) > 0.1
