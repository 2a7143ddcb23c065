"""Gated delta rule: chunk-parallel (WY / UT transform) form against the loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.api import delta_rule, gated_delta_rule

from .helpers import RTOL, assert_close, grads, nan_poisoned

SHAPES = [(2, 1, 8, 16), (1, 3, 16, 8)]  # (B, H, K, V): H in {1, 3}, K != V both ways
DTYPES = [torch.float64, torch.float32]



def _cases():
    for gated in (True, False):
        for dtype in DTYPES:
            for B, H, K, V in SHAPES:
                for T in (1, 63, 100, 257):
                    for C in (16, 64):
                        kind = "gated" if gated else "plain"
                        name = f"{kind}-{str(dtype)[6:]}-T{T}-C{C}-B{B}H{H}K{K}V{V}"
                        yield pytest.param(gated, dtype, B, T, H, K, V, C, id=name)


def make_inputs(B, T, H, K, V, seed=0, gated=True, decay_scale=2.0):
    """float64 leaves as the layer would produce them: unit keys, beta in (0, 1), g <= 0."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    inputs = {
        "q": randn(B, T, H, K),
        "k": F.normalize(randn(B, T, H, K), dim=-1),
        "v": randn(B, T, H, V),
        "beta": randn(B, T, H).sigmoid(),
        "initial_state": randn(B, H, K, V),
    }
    if gated:
        inputs["g"] = F.logsigmoid(decay_scale * randn(B, T, H))
    upstream = {"o": randn(B, T, H, V), "state": randn(B, H, K, V)}
    return inputs, upstream


def leaves(inputs, dtype):
    return {n: x.to(dtype).detach().requires_grad_(True) for n, x in inputs.items()}


def run(x, **kw):
    return gated_delta_rule(
        x["q"], x["k"], x["v"], x["beta"], x.get("g"), initial_state=x.get("initial_state"),
        output_final_state=True, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("gated, dtype, B, T, H, K, V, C", list(_cases()))
def test_chunk_matches_naive_outputs_and_grads(gated, dtype, B, T, H, K, V, C):
    inputs, up = make_inputs(B, T, H, K, V, seed=T * 7 + C + H, gated=gated)
    # The oracle always runs in float64, so float32 is measured against the exact answer.
    ref_in, got_in = leaves(inputs, torch.float64), leaves(inputs, dtype)
    o_ref, s_ref = run(ref_in, backend="naive")
    o, s = run(got_in, chunk_size=C, backend="chunk")
    rtol = RTOL[dtype]
    assert_close("gated_delta_rule o", o_ref.to(dtype), o, rtol)
    assert_close("gated_delta_rule final_state", s_ref.to(dtype), s, rtol)
    g_ref = grads(o_ref, up["o"], ref_in, s_ref, up["state"])
    g_got = grads(o, up["o"].to(dtype), got_in, s, up["state"].to(dtype))
    for name in inputs:
        assert_close(f"gated_delta_rule d{name}", g_ref[name].to(dtype), g_got[name], rtol)


# float32 gets a tolerance 50x tighter than RTOL here: with in-chunk log decays that are
# formed as differences of cumulative sums, cancellation gives errors ~ eps * |G| ~ 1e-5.
STRONG_DECAY_RTOL = {torch.float64: 1e-10, torch.float32: 2e-6}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_strong_decay_stays_finite_and_accurate(dtype):
    # Half of the tokens decay by up to exp(-40), the others barely, so cumulative log decays
    # reach ~ -1100 inside a chunk of 64 while some long-range terms survive. Any exp of a
    # positive exponent would overflow to inf and poison the result.
    B, T, H, K, V = 1, 130, 3, 8, 16
    inputs, up = make_inputs(B, T, H, K, V, seed=11)
    u = torch.rand(B, T, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    inputs["g"] = -40.0 * u * (u > 0.5) - 1e-3 * u
    ref_in, got_in = leaves(inputs, torch.float64), leaves(inputs, dtype)
    o_ref, s_ref = run(ref_in, backend="naive")
    o, s = run(got_in, chunk_size=64, backend="chunk")
    rtol = STRONG_DECAY_RTOL[dtype]
    assert_close("strong decay o", o_ref.to(dtype), o, rtol)
    assert_close("strong decay state", s_ref.to(dtype), s, rtol)
    g_ref = grads(o_ref, up["o"], ref_in, s_ref, up["state"])
    g_got = grads(o, up["o"].to(dtype), got_in, s, up["state"].to(dtype))
    for name in inputs:
        assert_close(f"strong decay d{name}", g_ref[name].to(dtype), g_got[name], rtol)


def _inference_cases():
    for dtype in DTYPES:
        for gated in (True, False):
            for T, C in [(1, 16), (100, 16), (257, 64), (130, 96), (63, 5)]:
                kind = "gated" if gated else "plain"
                yield pytest.param(dtype, gated, T, C, id=f"{kind}-{str(dtype)[6:]}-T{T}-C{C}")


@pytest.mark.parametrize("direct", [False, True], ids=["factored", "direct"])
@pytest.mark.parametrize("dtype, gated, T, C", list(_inference_cases()))
def test_inference_path_matches_naive(dtype, gated, T, C, direct, monkeypatch):
    """Without autograd the chunk form takes its inference path (eq. 12), in sub-chunks of 32
    for C = 64 and 96, with the decay folded into the operands or (forced) the masked matrix.
    Its preallocated chunk buffers start as NaN, so an element left unwritten fails."""
    from nestdsl.kernels.delta_rule import chunk

    poisoned = []

    def new_output(like, shape):
        poisoned.append(shape)
        return nan_poisoned(shape, like.dtype, like.device)

    monkeypatch.setattr(chunk, "_new_output", new_output)
    if direct:
        monkeypatch.setattr(chunk, "FACTORED_DECAY_RANGE", 0.0)
    inputs, _ = make_inputs(2, T, 3, 16, 8, seed=T + C, gated=gated)
    if gated:  # milder decays: every chunk's total stays inside the factored range (float32: 39)
        inputs["g"] = 0.3 * inputs["g"]
        g = F.pad(inputs["g"], (0, 0, 0, -T % 32))  # every sub-chunk's total, at most 32 tokens
        assert g.view(2, -1, 32, 3).sum(2).min() > -39
    o_ref, s_ref = run(inputs, backend="naive")
    with torch.no_grad():
        o, s = run({n: x.to(dtype) for n, x in inputs.items()}, chunk_size=C, backend="chunk")
    assert o.is_contiguous() and o.dtype == dtype
    assert poisoned, "the inference path no longer preallocates: drop the poisoning"
    assert_close("inference o", o_ref.to(dtype), o, RTOL[dtype])
    assert_close("inference state", s_ref.to(dtype), s, RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_inference_path_under_strong_decay(dtype):
    """Total log decays beyond the factored range switch to the masked matrix: still exact."""
    inputs, _ = make_inputs(1, 130, 3, 8, 16, seed=12)
    u = torch.rand(1, 130, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    inputs["g"] = -40.0 * u * (u > 0.5) - 1e-3 * u
    o_ref, s_ref = run(inputs, backend="naive")
    with torch.no_grad():
        o, s = run({n: x.to(dtype) for n, x in inputs.items()}, chunk_size=64, backend="chunk")
    assert_close("strong decay inference o", o_ref.to(dtype), o, STRONG_DECAY_RTOL[dtype])
    assert_close("strong decay inference state", s_ref.to(dtype), s, STRONG_DECAY_RTOL[dtype])


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_delta_rule_is_gated_delta_rule_without_g(backend):
    inputs, _ = make_inputs(2, 70, 3, 8, 16, seed=3, gated=False)
    x = inputs
    kw = {"scale": 0.3, "initial_state": x["initial_state"], "output_final_state": True}
    o1, s1 = delta_rule(x["q"], x["k"], x["v"], x["beta"], chunk_size=16, backend=backend, **kw)
    o2, s2 = gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], None, backend="naive", **kw)
    assert_close(f"delta_rule[{backend}] o", o2, o1, 1e-12)
    assert_close(f"delta_rule[{backend}] state", s2, s1, 1e-12)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_zero_log_decay_equals_delta_rule(backend):
    inputs, _ = make_inputs(2, 70, 3, 8, 16, seed=4, gated=False)
    x = inputs
    zeros = torch.zeros_like(x["beta"])
    kw = {"initial_state": x["initial_state"], "output_final_state": True, "backend": backend}
    o1, s1 = gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], zeros, chunk_size=16, **kw)
    o2, s2 = delta_rule(x["q"], x["k"], x["v"], x["beta"], chunk_size=16, **kw)
    assert_close("g=0 o", o2, o1, 1e-12)
    assert_close("g=0 state", s2, s1, 1e-12)


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_streaming_two_pieces_equals_one_pass(backend, gated):
    inputs, _ = make_inputs(1, 100, 3, 8, 16, seed=5, gated=gated)
    cut = 37  # inside the third chunk of 16
    first = {n: (x[:, :cut] if n != "initial_state" else x) for n, x in inputs.items()}
    second = {n: x[:, cut:] for n, x in inputs.items() if n != "initial_state"}
    o_full, s_full = run(inputs, chunk_size=16, backend=backend)
    o1, s1 = run(first, chunk_size=16, backend=backend)
    o2, s2 = run({**second, "initial_state": s1}, chunk_size=16, backend=backend)
    assert_close("streamed o", o_full, torch.cat([o1, o2], dim=1), 1e-12)
    assert_close("streamed final_state", s_full, s2, 1e-12)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_zero_beta_only_decays_the_state(backend):
    # beta = 0 writes nothing: S_t = exp(G_t) S_0 and o_t = scale * exp(G_t) S_0^T q_t.
    B, T, H, K, V = 1, 40, 3, 8, 16
    x, _ = make_inputs(B, T, H, K, V, seed=6)
    x["beta"] = torch.zeros_like(x["beta"])
    o, s = run(x, scale=0.5, chunk_size=16, backend=backend)
    G = x["g"].cumsum(dim=1)  # [B, T, H]
    expect = 0.5 * G.exp()[..., None] * torch.einsum("bthk,bhkv->bthv", x["q"], x["initial_state"])
    assert_close("beta=0 o", expect, o, 1e-12)
    assert_close("beta=0 state", G[:, -1, :, None, None].exp() * x["initial_state"], s, 1e-12)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_beta_one_recalls_the_last_written_value(backend):
    # With a unit key and beta = 1 the delta rule overwrites the memory at k exactly:
    # S^T k = v, so reading with q = k returns scale * v, whatever the previous state.
    B, T, H, K, V = 2, 20, 3, 8, 16
    x, _ = make_inputs(B, T, H, K, V, seed=7, gated=False)
    x["beta"] = torch.ones_like(x["beta"])
    x["q"] = x["k"]
    o, _ = run(x, scale=1.0, chunk_size=16, backend=backend)
    assert_close("perfect recall", x["v"], o, 1e-12)


@pytest.mark.parametrize("C", [1, 5, 300])
def test_unusual_chunk_sizes(C):
    inputs, _ = make_inputs(1, 41, 3, 8, 16, seed=8)
    o_ref, s_ref = run(inputs, backend="naive")
    o, s = run(inputs, chunk_size=C, backend="chunk")
    assert_close(f"o chunk_size={C}", o_ref, o, 1e-10)
    assert_close(f"state chunk_size={C}", s_ref, s, 1e-10)


def test_causal_future_tokens_do_not_change_past_outputs():
    x, _ = make_inputs(1, 50, 3, 8, 16, seed=9)
    t0 = 20  # inside the second chunk of 16, so the intra-chunk masks matter
    y = {n: t.clone() for n, t in x.items()}
    y["v"][:, t0:] += 2.0
    y["beta"][:, t0:] = 0.9
    y["g"][:, t0:] -= 1.0
    y["k"][:, t0:] = F.normalize(y["k"][:, t0:] + 1.0, dim=-1)
    o, _ = run(x, chunk_size=16, backend="chunk")
    o2, _ = run(y, chunk_size=16, backend="chunk")
    assert_close("past outputs", o[:, :t0], o2[:, :t0], 1e-14)
    assert (o[:, t0:] - o2[:, t0:]).abs().max() > 1e-3


def test_rejects_bad_arguments():
    q = torch.randn(1, 4, 2, 8)
    v = torch.randn(1, 4, 2, 6)
    beta = torch.rand(1, 4, 2)
    with pytest.raises(ValueError, match="beta"):
        gated_delta_rule(q, q, v, beta[:, :3])
    with pytest.raises(ValueError, match="g must"):
        gated_delta_rule(q, q, v, beta, beta.double())
    with pytest.raises(ValueError, match="initial_state"):
        delta_rule(q, q, v, beta, initial_state=torch.randn(1, 2, 8, 8))
