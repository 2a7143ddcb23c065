"""Triton Titans linear memory against the loop oracle (Triton interpreter, float32 vs float64).

Outputs, both final states (memory and momentum) and the gradients of q, k, v, theta, eta,
alpha and both initial states; the chunk size is part of the function here (gradients at the
chunk-start weights), so chunks of 1, 5 and 16 tokens, T shorter than a chunk and not a
multiple of it, several heads, K != V, and zero gates (eta = 0, alpha = 1).
"""

from __future__ import annotations

import pytest
import torch

from nestdsl.kernels.titans_linear import titans_linear_chunk, titans_linear_naive

from .helpers import RTOL, assert_close
from .triton_interp import check_against_oracle, interpreter, load, rand_inputs  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter")

CASES = [  # B, T, H, K, V, chunk, initial states
    pytest.param((1, 5, 1, 16, 16, 16, True), id="T<chunk"),
    pytest.param((2, 37, 2, 8, 5, 16, True), id="T=37,K!=V"),
    pytest.param((2, 37, 2, 8, 5, 16, False), id="no-initial-state"),
    pytest.param((1, 23, 3, 20, 12, 5, True), id="C=5,H=3"),
    pytest.param((1, 6, 1, 4, 4, 1, True), id="C=1"),
    pytest.param((1, 19, 1, 16, 80, 8, True), id="V=80,two-value-tiles"),
    pytest.param((1, 70, 1, 32, 40, 64, True), id="C=64,32-column-tiles"),
]


def _gates(B, T, H, dtype=torch.float64):
    theta = 0.5 * torch.rand(B, T, H, dtype=dtype)
    eta = torch.rand(B, T, H, dtype=dtype)
    alpha = 0.2 * torch.rand(B, T, H, dtype=dtype)
    return theta, eta, alpha


def _call(chunk):
    def call(fn, xs):
        o, (M, S) = fn(xs["q"], xs["k"], xs["v"], xs["theta"], xs["eta"], xs["alpha"],
                       chunk_size=chunk, scale=0.8, initial_state=xs["M0"],
                       initial_momentum=xs["S0"], output_final_state=True)  # fmt: skip
        return o, [M, S]

    return call


@pytest.mark.parametrize("shape", CASES)
def test_matches_oracle(shape):
    B, T, H, K, V, chunk, h0 = shape
    tr = load("titans_linear.triton")
    q, k, v, M0 = rand_inputs(B, T, H, K, V, h0=h0)
    S0 = None if M0 is None else 0.1 * torch.randn_like(M0)
    theta, eta, alpha = _gates(B, T, H)
    inputs = {"q": q, "k": k, "v": v, "theta": theta, "eta": eta, "alpha": alpha, "M0": M0,
              "S0": S0}  # fmt: skip
    check_against_oracle(_call(chunk), titans_linear_naive, tr.titans_linear_triton, inputs)


def test_zero_gates():
    """eta = 0 (no momentum carried) and alpha = 1 (full forgetting) on some tokens."""
    tr = load("titans_linear.triton")
    q, k, v, M0 = rand_inputs(1, 21, 2, 16, 16, h0=True)
    theta, eta, alpha = _gates(1, 21, 2)
    eta[:, 3::4] = 0.0
    alpha[:, 6::7] = 1.0
    inputs = {"q": q, "k": k, "v": v, "theta": theta, "eta": eta, "alpha": alpha, "M0": M0,
              "S0": None}  # fmt: skip
    check_against_oracle(_call(8), titans_linear_naive, tr.titans_linear_triton, inputs)


def test_tiles_over_the_shared_memory_budget_run_the_chunk_form():
    tr = load("titans_linear.triton")
    q, k, v, M0 = rand_inputs(1, 9, 1, 128, 8, h0=True, dtype=torch.float32)
    gates = _gates(1, 9, 1, torch.float32)
    kw = {"chunk_size": 64, "initial_state": M0, "output_final_state": True}
    o, (M, S) = tr.titans_linear_triton(q, k, v, *gates, **kw)
    o_ref, (M_ref, S_ref) = titans_linear_chunk(q, k, v, *gates, **kw)
    assert torch.equal(o, o_ref) and torch.equal(M, M_ref) and torch.equal(S, S_ref)


def test_no_grad_without_final_state():
    tr = load("titans_linear.triton")
    q, k, v, _ = rand_inputs(1, 20, 1, 16, 16, h0=False, dtype=torch.float32)
    gates = _gates(1, 20, 1, torch.float32)
    with torch.no_grad():
        o, states = tr.titans_linear_triton(q, k, v, *gates, chunk_size=8)
    assert states is None
    o_ref, _ = titans_linear_chunk(q, k, v, *gates, chunk_size=8)
    assert_close("o", o_ref, o, RTOL[torch.float32])
