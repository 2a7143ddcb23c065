"""Causal softmax attention as a cache memory: SDPA form, loop reference and streaming."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.api import softmax_attention

from .helpers import RTOL, assert_close, grads

DTYPES = [torch.float64, torch.float32]



def make_inputs(B, T, H, K, V, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    return randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V), randn(B, T, H, V)


def sdpa(q, k, v, **kw):
    """Reference SDPA in the [B, T, H, D] layout."""
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw
    )
    return o.transpose(1, 2)


def _cases():
    for dtype in DTYPES:
        for B, H, K, V in [(2, 1, 8, 16), (1, 3, 16, 8)]:
            for T in (1, 63, 100):
                for window in (None, 1, 7, 64):
                    for Tc in (0, 5):
                        name = f"{str(dtype)[6:]}-T{T}-w{window}-cache{Tc}-B{B}H{H}K{K}V{V}"
                        yield pytest.param(dtype, B, T, H, K, V, window, Tc, id=name)


@pytest.mark.parametrize("dtype, B, T, H, K, V, window, Tc", list(_cases()))
def test_chunk_matches_naive_outputs_and_grads(dtype, B, T, H, K, V, window, Tc):
    q, k, v, do = make_inputs(B, T, H, K, V, seed=T + H, dtype=torch.float64)
    # A cache of Tc past positions (Tc = 0: no initial state, the plain causal path).
    _, kc, vc, _ = make_inputs(B, Tc, H, K, V, seed=99)
    tensors = (q, k, v, kc, vc) if Tc else (q, k, v)
    ref = [x.clone().requires_grad_(True) for x in tensors]
    got = [x.to(dtype).requires_grad_(True) for x in tensors]

    def call(xs, backend):
        state = (xs[3], xs[4]) if Tc else None
        return softmax_attention(
            xs[0], xs[1], xs[2], window=window, initial_state=state, backend=backend
        )[0]

    o_ref, o = call(ref, "naive"), call(got, "chunk")
    rtol = RTOL[dtype]
    assert_close("softmax_attention o", o_ref.to(dtype), o, rtol)
    names = ["q", "k", "v", "k_cache", "v_cache"][: len(tensors)]
    g_ref = grads(o_ref, do, dict(zip(names, ref, strict=True)))
    g_got = grads(o, do.to(dtype), dict(zip(names, got, strict=True)))
    for name in names:
        assert_close(f"softmax_attention d{name}", g_ref[name].to(dtype), g_got[name], rtol)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_equals_sdpa_causal(dtype, backend):
    q, k, v, _ = make_inputs(2, 57, 3, 8, 16, seed=1, dtype=dtype)
    o, state = softmax_attention(q, k, v, backend=backend)
    assert state is None
    assert_close(f"{backend} vs SDPA is_causal", sdpa(q, k, v, is_causal=True), o, RTOL[dtype])
    o, _ = softmax_attention(q, k, v, scale=0.21, backend=backend)
    ref = sdpa(q, k, v, is_causal=True, scale=0.21)
    assert_close(f"{backend} vs SDPA explicit scale", ref, o, RTOL[dtype])


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("window", [1, 4, 30])
def test_windowed_equals_explicitly_masked_sdpa(window, backend):
    T = 40
    q, k, v, _ = make_inputs(1, T, 3, 8, 16, seed=2)
    i = torch.arange(T)
    # Token t sees positions t - window + 1 .. t.
    mask = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - window + 1)  # [T, T]
    o, _ = softmax_attention(q, k, v, window=window, backend=backend)
    assert_close(f"{backend} window={window}", sdpa(q, k, v, attn_mask=mask), o, 1e-12)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("window", [None, 1, 5, 30])
def test_streaming_in_pieces_equals_one_pass(window, backend):
    q, k, v, _ = make_inputs(2, 50, 3, 8, 16, seed=3)
    o_full, cache_full = softmax_attention(
        q, k, v, window=window, output_final_state=True, backend=backend
    )
    pieces, state = [], None
    for lo, hi in [(0, 3), (3, 20), (20, 21), (21, 50)]:  # pieces shorter and longer than w
        o, state = softmax_attention(
            q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], window=window, initial_state=state,
            output_final_state=True, backend=backend,
        )  # fmt: skip
        kept = hi if window is None else min(window - 1, hi)
        assert state[0].shape[1] == kept, f"cache length {state[0].shape[1]} != {kept}"
        pieces.append(o)
    assert_close("streamed o", o_full, torch.cat(pieces, dim=1), 1e-12)
    assert_close("streamed k_cache", cache_full[0], state[0], 0.0)
    assert_close("streamed v_cache", cache_full[1], state[1], 0.0)
    kept = 50 if window is None else window - 1
    assert torch.equal(state[0], k[:, 50 - kept :]) and torch.equal(state[1], v[:, 50 - kept :])


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("window, sinks", [(1, 1), (4, 3), (6, 10), (30, 4)])
def test_sinks_stay_visible_under_a_window(window, sinks, backend):
    """Token t sees the first `sinks` positions and t - window + 1 .. t (SW-Attn*)."""
    T = 40
    q, k, v, _ = make_inputs(1, T, 3, 8, 16, seed=4)
    i = torch.arange(T)
    near = i[None, :] >= i[:, None] - window + 1
    mask = (i[None, :] <= i[:, None]) & (near | (i[None, :] < sinks))  # [T, T]
    o, _ = softmax_attention(q, k, v, window=window, sinks=sinks, backend=backend)
    assert_close(f"{backend} window={window} sinks={sinks}", sdpa(q, k, v, attn_mask=mask), o,
                 1e-12)  # fmt: skip


@pytest.mark.parametrize("window, sinks", [(5, 3), (2, 7)])
def test_sinks_chunk_matches_naive_with_gradients_and_streams(window, sinks):
    q, k, v, do = make_inputs(2, 37, 2, 8, 16, seed=5)
    xs = {"q": q, "k": k, "v": v}
    results = {}
    for backend in ("naive", "chunk"):
        leaves = {n: x.clone().requires_grad_() for n, x in xs.items()}
        o, cache = softmax_attention(*leaves.values(), window=window, sinks=sinks,
                                     output_final_state=True, backend=backend)  # fmt: skip
        results[backend] = (o, cache, grads(o, do, leaves))
    (o_n, c_n, g_n), (o_c, c_c, g_c) = results["naive"], results["chunk"]
    assert_close("sinks o", o_n, o_c, 1e-12)
    for name in xs:
        assert_close(f"sinks d{name}", g_n[name], g_c[name], 1e-12)
    assert torch.equal(c_n[0], c_c[0]) and c_c[0].shape[1] == sinks + window - 1
    assert torch.equal(c_c[0], torch.cat([k[:, :sinks], k[:, 37 - (window - 1) :]], dim=1))
    for backend in ("naive", "chunk"):  # pieces shorter and longer than sinks + window
        pieces, state = [], None
        for lo, hi in [(0, 2), (2, 3), (3, 11), (11, 37)]:
            o, state = softmax_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], window=window,
                                         sinks=sinks, initial_state=state,
                                         output_final_state=True, backend=backend)  # fmt: skip
            pieces.append(o)
        assert_close(f"{backend} streamed with sinks", o_n, torch.cat(pieces, dim=1), 1e-12)
        assert torch.equal(state[0], c_n[0])


def test_rejects_bad_arguments():
    q, k, v, _ = make_inputs(1, 4, 2, 8, 6, dtype=torch.float32)
    with pytest.raises(ValueError, match="window"):
        softmax_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="sinks"):
        softmax_attention(q, k, v, window=3, sinks=-1)
    with pytest.raises(ValueError, match="v_cache"):
        softmax_attention(q, k, v, initial_state=(k[:, :2], v[:, :3]))
