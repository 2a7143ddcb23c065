"""Linear attention: chunk-parallel form against the loop reference (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

from nestdsl.kernels.api import linear_attention

from .helpers import RTOL, assert_close, grads

SHAPES = [(2, 1, 8, 16), (1, 3, 16, 8)]  # (B, H, K, V): H in {1, 3}, K != V both ways
DTYPES = [torch.float64, torch.float32]



def _cases():
    for dtype in DTYPES:
        for B, H, K, V in SHAPES:
            for T in (1, 63, 100, 257):
                for C in (16, 64):
                    name = f"{str(dtype)[6:]}-T{T}-C{C}-B{B}H{H}K{K}V{V}"
                    yield pytest.param(dtype, B, T, H, K, V, C, id=name)


def make_inputs(B, T, H, K, V, seed=0):
    """float64 leaves: q, k, v, initial state, and upstream gradients for o and the state."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    inputs = {
        "q": randn(B, T, H, K),
        "k": randn(B, T, H, K) * K**-0.5,
        "v": randn(B, T, H, V),
        "initial_state": randn(B, H, K, V),
    }
    upstream = {"o": randn(B, T, H, V), "state": randn(B, H, K, V)}
    return inputs, upstream


def leaves(inputs, dtype):
    return {n: x.to(dtype).detach().requires_grad_(True) for n, x in inputs.items()}


@pytest.mark.parametrize("dtype, B, T, H, K, V, C", list(_cases()))
def test_chunk_matches_naive_outputs_and_grads(dtype, B, T, H, K, V, C):
    inputs, up = make_inputs(B, T, H, K, V, seed=T * 7 + C + H)
    # The oracle always runs in float64, so float32 is measured against the exact answer.
    ref_in, got_in = leaves(inputs, torch.float64), leaves(inputs, dtype)
    o_ref, s_ref = linear_attention(
        ref_in["q"], ref_in["k"], ref_in["v"], initial_state=ref_in["initial_state"],
        output_final_state=True, backend="naive",
    )  # fmt: skip
    o, s = linear_attention(
        got_in["q"], got_in["k"], got_in["v"], initial_state=got_in["initial_state"],
        output_final_state=True, chunk_size=C, backend="chunk",
    )  # fmt: skip
    rtol = RTOL[dtype]
    assert_close("linear_attention o", o_ref.to(dtype), o, rtol)
    assert_close("linear_attention final_state", s_ref.to(dtype), s, rtol)
    g_ref = grads(o_ref, up["o"], ref_in, s_ref, up["state"])
    g_got = grads(o, up["o"].to(dtype), got_in, s, up["state"].to(dtype))
    for name in inputs:
        assert_close(f"linear_attention d{name}", g_ref[name].to(dtype), g_got[name], rtol)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_equals_direct_quadratic_formula(backend):
    B, T, H, K, V = 2, 45, 3, 8, 16
    inputs, _ = make_inputs(B, T, H, K, V, seed=1)
    q, k, v, S0 = inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"]
    scale = 0.37
    # o_t = scale * (sum_{i <= t} (q_t . k_i) v_i + S0^T q_t)
    scores = torch.einsum("bthk,bihk->bhti", q, k).tril()  # [B, H, T, T]
    direct = scale * (
        torch.einsum("bhti,bihv->bthv", scores, v) + torch.einsum("bthk,bhkv->bthv", q, S0)
    )
    o, s = linear_attention(
        q, k, v, scale=scale, initial_state=S0, output_final_state=True, chunk_size=16,
        backend=backend,
    )  # fmt: skip
    assert_close(f"{backend} o vs direct formula", direct, o, 1e-12)
    assert_close(f"{backend} state vs direct", S0 + torch.einsum("bthk,bthv->bhkv", k, v), s, 1e-12)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_streaming_two_pieces_equals_one_pass(backend):
    B, T, H, K, V = 1, 100, 3, 8, 16
    inputs, _ = make_inputs(B, T, H, K, V, seed=2)
    q, k, v, S0 = inputs["q"], inputs["k"], inputs["v"], inputs["initial_state"]
    cut = 37  # inside the third chunk of 16
    kw = {"chunk_size": 16, "output_final_state": True, "backend": backend}
    o_full, s_full = linear_attention(q, k, v, initial_state=S0, **kw)
    o1, s1 = linear_attention(q[:, :cut], k[:, :cut], v[:, :cut], initial_state=S0, **kw)
    o2, s2 = linear_attention(q[:, cut:], k[:, cut:], v[:, cut:], initial_state=s1, **kw)
    assert_close("streamed o", o_full, torch.cat([o1, o2], dim=1), 1e-12)
    assert_close("streamed final_state", s_full, s2, 1e-12)


def test_defaults_no_state_and_default_scale():
    B, T, H, K, V = 2, 30, 1, 8, 16
    inputs, _ = make_inputs(B, T, H, K, V, seed=3)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    o, s = linear_attention(q, k, v, chunk_size=16)
    assert s is None
    o_ref, _ = linear_attention(q, k, v, scale=K**-0.5, backend="naive")
    assert_close("default scale = K**-0.5", o_ref, o, 1e-12)
    # No initial state means a zero state: the final state is sum_t k_t v_t^T.
    _, s = linear_attention(q, k, v, output_final_state=True, chunk_size=16)
    assert_close("state from zero", torch.einsum("bthk,bthv->bhkv", k, v), s, 1e-12)


@pytest.mark.parametrize("C", [1, 5, 300])
def test_unusual_chunk_sizes(C):
    B, T, H, K, V = 1, 41, 3, 8, 16
    inputs, _ = make_inputs(B, T, H, K, V, seed=4)
    args = (inputs["q"], inputs["k"], inputs["v"])
    kw = {"initial_state": inputs["initial_state"], "output_final_state": True}
    o_ref, s_ref = linear_attention(*args, **kw, backend="naive")
    o, s = linear_attention(*args, **kw, chunk_size=C, backend="chunk")
    assert_close(f"o chunk_size={C}", o_ref, o, 1e-10)
    assert_close(f"state chunk_size={C}", s_ref, s, 1e-10)


def test_causal_future_tokens_do_not_change_past_outputs():
    B, T, H, K, V = 1, 50, 3, 8, 16
    inputs, _ = make_inputs(B, T, H, K, V, seed=5)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    t0 = 20  # inside the second chunk of 16, so the intra-chunk mask matters
    k2, v2 = k.clone(), v.clone()
    k2[:, t0:] += 3.0
    v2[:, t0:] -= 5.0
    o, _ = linear_attention(q, k, v, chunk_size=16)
    o2, _ = linear_attention(q, k2, v2, chunk_size=16)
    assert_close("past outputs", o[:, :t0], o2[:, :t0], 1e-14)
    assert (o[:, t0:] - o2[:, t0:]).abs().max() > 1e-3


def test_rejects_bad_arguments():
    q = torch.randn(1, 4, 2, 8)
    v = torch.randn(1, 4, 2, 6)
    with pytest.raises(ValueError, match="k must have q's shape"):
        linear_attention(q, torch.randn(1, 4, 2, 7), v)
    with pytest.raises(ValueError, match="initial_state"):
        linear_attention(q, q, v, initial_state=torch.randn(1, 2, 6, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, q, v, chunk_size=0)
    with pytest.raises(ValueError, match="dtype"):
        linear_attention(q, q, v.double())
