"""Triton linear attention against the loop oracle (Triton interpreter, float32 vs float64).

Outputs, final states and the gradients of q, k, v and the initial state; T shorter than a
chunk and not a multiple of it, several heads, K != V, two value tiles, and the compiler's
normalized variant (values with one more channel of ones).
"""

from __future__ import annotations

import pytest
import torch

from nestdsl.kernels.linear_attention import linear_attention_naive

from .helpers import RTOL, assert_close
from .triton_interp import check_against_oracle, interpreter, load, rand_inputs  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter")

CASES = [  # B, T, H, K, V, chunk, initial state
    pytest.param((1, 7, 1, 16, 16, 16, True), id="T<chunk"),
    pytest.param((2, 37, 2, 8, 5, 16, True), id="T=37,K!=V"),
    pytest.param((2, 37, 2, 8, 5, 16, False), id="no-initial-state"),
    pytest.param((1, 70, 3, 20, 24, 32, True), id="T=70,H=3"),
    pytest.param((1, 33, 1, 16, 80, 16, True), id="V=80,two-value-tiles"),
]


def _call(chunk):
    def call(fn, xs):
        kw = {} if fn is linear_attention_naive else {"chunk_size": chunk}
        o, S = fn(xs["q"], xs["k"], xs["v"], scale=0.6, initial_state=xs["initial_state"],
                  output_final_state=True, **kw)  # fmt: skip
        return o, [S]

    return call


@pytest.mark.parametrize("shape", CASES)
def test_matches_oracle(shape):
    B, T, H, K, V, chunk, h0 = shape
    tr = load("linear_attention.triton")
    q, k, v, s = rand_inputs(B, T, H, K, V, h0=h0)
    inputs = {"q": q, "k": k, "v": v, "initial_state": s}
    check_against_oracle(_call(chunk), linear_attention_naive, tr.linear_attention_triton, inputs)


def test_normalized_variant():
    """Katharopoulos eq. 6 as the compiler runs it: a ones channel on v makes the last output
    column the denominator scale * q . (z_0 + sum k); positive feature maps keep it > 0."""
    tr = load("linear_attention.triton")
    q, k, v, _ = rand_inputs(2, 29, 2, 16, 7, h0=False)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [B, T, H, V + 1]
    z0 = torch.rand(2, 2, 16, 8, dtype=torch.float64)
    inputs = {"q": q, "k": k, "v": v1, "initial_state": z0}
    check_against_oracle(_call(16), linear_attention_naive, tr.linear_attention_triton, inputs)
    o, _ = tr.linear_attention_triton(q.float(), k.float(), v1.float(), scale=1.0, chunk_size=16)
    denom = (q.float() * k.float().cumsum(1)).sum(-1)  # [B, T, H], q_t . sum_{i<=t} k_i
    assert_close("denominator", denom, o[..., -1], RTOL[torch.float32])


def test_no_grad_without_final_state():
    tr = load("linear_attention.triton")
    q, k, v, _ = rand_inputs(1, 20, 2, 16, 16, h0=False, dtype=torch.float32)
    with torch.no_grad():
        o, S = tr.linear_attention_triton(q, k, v, chunk_size=16)
    assert S is None
    assert_close("o", linear_attention_naive(q, k, v)[0], o, RTOL[torch.float32])
