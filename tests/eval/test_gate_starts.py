"""Gates start where their papers start: the `mamba_decay` construct and the shipped specs.

A decay gate that starts at 0.5 per token forgets a key-value pair before its query arrives and
never learns to recall (nestdsl issue 10); these tests pin the starting points.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler.modules.ops import Linear, MambaDecay, Stream


def test_mamba_decay_matches_its_formula_in_float64():
    torch.manual_seed(0)
    decay = MambaDecay(3).double()
    y = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)  # [B, T, H]
    A, dt_bias = decay.A_log.exp(), decay.dt_bias
    expected = -A * F.softplus(y + dt_bias)
    assert torch.allclose(decay(y), expected, rtol=0, atol=1e-15)
    (decay(y).sum()).backward()  # d/dy of -A softplus(y + b) = -A sigmoid(y + b)
    assert torch.allclose(y.grad, (-A * torch.sigmoid(y + dt_bias)).expand_as(y).detach())


def test_mamba_decay_initialisation_ranges():
    torch.manual_seed(1)
    decay = MambaDecay(4096)
    A = decay.A_log.exp()
    dt = F.softplus(decay.dt_bias)
    assert 1.0 <= A.min() and A.max() <= 16.0
    assert A.mean().item() == pytest.approx(8.5, abs=0.3)  # U(1, 16)
    assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 0.1 * 1.001  # softplus^{-1} inverted exactly
    assert dt.log().mean().item() == pytest.approx(math.log(1e-2), abs=0.1)  # log-uniform


def test_linear_then_mamba_decay_is_a_gate_below_zero():
    torch.manual_seed(0)
    lin = Linear((8,), (2,), False, ["mamba_decay"], key="g")
    g = lin(torch.randn(3, 7, 8), 1, Stream(pos=0, state={}))  # [B, T, 2]
    assert g.shape == (3, 7, 2) and (g < 0).all()


def _gate_at_start(spec: str, node: str) -> torch.Tensor:
    """The tensor `node` of layer 0 for random text, as the freshly compiled spec computes it."""
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load(spec))
    seen = {}
    module = model.layers[0].ops[node]
    module.register_forward_hook(lambda m, args, out: seen.setdefault("out", out.detach()))
    model(torch.randint(0, 256, (4, 64)))
    return seen["out"]


def test_gated_deltanet_starts_remembering():
    keep = _gate_at_start("gated-deltanet", "g").exp()  # per-token decay exp(g_t)  [B, T, H]
    assert keep.median() > 0.8  # the shipped logsigmoid gate started at 0.5
    assert keep.min() > 0.05
