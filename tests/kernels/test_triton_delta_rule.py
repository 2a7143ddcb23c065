"""Triton gated delta rule (and plain delta rule, g=None) against the loop oracle.

Runs in the Triton interpreter on the CPU (float32, small sizes); the oracle runs in float64.
Outputs, final states and the gradients of q, k, v, beta, g and the initial state, for T
shorter than a chunk, T not a multiple of the chunk, several heads and K != V.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.delta_rule import gated_delta_rule_chunk, gated_delta_rule_naive

from .helpers import RTOL, assert_close, grads
from .triton_interp import (  # noqa: F401
    as_float32_leaves,
    check_against_oracle,
    interpreter,
    load,
    rand_inputs,
)

pytestmark = pytest.mark.usefixtures("interpreter")

CASES = [  # B, T, H, K, V, chunk
    pytest.param((1, 5, 1, 16, 16, 16), id="T<chunk"),
    pytest.param((2, 37, 2, 8, 5, 16), id="T=37,K!=V"),
    pytest.param((1, 70, 3, 20, 24, 32), id="T=70,H=3,K=20"),
    pytest.param((1, 33, 1, 16, 80, 16), id="V=80,two-value-tiles"),
]


def _run(B, T, H, K, V, chunk, *, gated: bool, h0: bool):
    tr = load("delta_rule.triton")
    q, k, v, s = rand_inputs(B, T, H, K, V, h0=h0)
    beta = torch.rand(B, T, H, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(B, T, H, dtype=torch.float64) + 2.0) if gated else None
    ref_in = {"q": q, "k": k, "v": v, "beta": beta, "g": g, "initial_state": s}
    ref_in = {n: None if x is None else x.requires_grad_() for n, x in ref_in.items()}
    got_in = as_float32_leaves(ref_in)
    do = torch.randn(B, T, H, V, dtype=torch.float64)
    dS = torch.randn(B, H, K, V, dtype=torch.float64)

    def call(fn, xs, **kw):
        o, S = fn(xs["q"], xs["k"], xs["v"], xs["beta"], xs["g"], scale=0.7,
                  initial_state=xs["initial_state"], output_final_state=True, **kw)  # fmt: skip
        leaves = {n: x for n, x in xs.items() if x is not None}
        return o, S, grads(o, do.to(o.dtype), leaves, S, dS.to(S.dtype))

    o_ref, S_ref, g_ref = call(gated_delta_rule_naive, ref_in)
    o, S, g_got = call(tr.gated_delta_rule_triton, got_in, chunk_size=chunk)
    tol = RTOL[torch.float32]
    assert_close("o", o_ref.float(), o, tol)
    assert_close("final state", S_ref.float(), S, tol)
    assert set(g_got) == set(g_ref)
    for name in g_ref:
        assert_close(f"d{name}", g_ref[name].float(), g_got[name], tol)


@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_matches_oracle_with_initial_state(shape, gated):
    _run(*shape, gated=gated, h0=True)


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_matches_oracle_without_initial_state(gated):
    _run(2, 37, 2, 8, 5, 16, gated=gated, h0=False)


def test_strong_decay_and_zero_beta():
    """Half of the tokens decay by up to exp(-40), so log decays reach ~ -600 inside a chunk of
    32 while long-range terms survive; beta = 0 on every third token (no write). Differences
    of cumulative log decays would lose ~1e-5 here; the direct segment sums keep 2e-6, as the
    chunk form's own strong-decay test demands."""
    tr = load("delta_rule.triton")
    q, k, v, s = rand_inputs(1, 70, 2, 8, 16, h0=True)
    beta = torch.rand(1, 70, 2, dtype=torch.float64)
    beta[:, ::3] = 0.0
    u = torch.rand(1, 70, 2, dtype=torch.float64)
    g = -40.0 * u * (u > 0.5) - 1e-3 * u
    inputs = {"q": q, "k": k, "v": v, "beta": beta, "g": g, "initial_state": s}

    def call(fn, xs):
        kw = {} if fn is gated_delta_rule_naive else {"chunk_size": 32}
        o, S = fn(xs["q"], xs["k"], xs["v"], xs["beta"], xs["g"],
                  initial_state=xs["initial_state"], output_final_state=True, **kw)  # fmt: skip
        return o, [S]

    check_against_oracle(call, gated_delta_rule_naive, tr.gated_delta_rule_triton, inputs,
                         rtol=2e-6)  # fmt: skip


def test_no_final_state_and_no_grad():
    tr = load("delta_rule.triton")
    q, k, v, _ = rand_inputs(1, 20, 1, 16, 16, h0=False, dtype=torch.float32)
    beta = torch.rand(1, 20, 1)
    with torch.no_grad():
        o, S = tr.gated_delta_rule_triton(q, k, v, beta, chunk_size=16)
    assert S is None
    o_ref, _ = gated_delta_rule_naive(q, k, v, beta)
    assert_close("o", o_ref, o, RTOL[torch.float32])


def test_float64_runs_the_chunk_form():
    tr = load("delta_rule.triton")
    q, k, v, s = rand_inputs(1, 9, 1, 4, 3, h0=True)
    beta = torch.rand(1, 9, 1, dtype=torch.float64)
    o, S = tr.gated_delta_rule_triton(q, k, v, beta, initial_state=s, output_final_state=True)
    o_ref, S_ref = gated_delta_rule_chunk(q, k, v, beta, initial_state=s, output_final_state=True)
    assert o.dtype == torch.float64 and torch.equal(o, o_ref) and torch.equal(S, S_ref)
