"""Titans linear memory with momentum: chunk (dual) form against the per-token loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.titans_linear import titans_linear, titans_linear_chunk, titans_linear_naive

from .helpers import assert_close

RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
NAMES = ("q", "k", "v", "theta", "eta", "alpha", "initial_state", "initial_momentum")


def make_inputs(B, T, H, K, V, seed=0):
    """float64 leaves in the ranges a layer produces: unit keys, gates in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return {
        "q": randn(B, T, H, K),
        "k": F.normalize(randn(B, T, H, K), dim=-1),
        "v": randn(B, T, H, V),
        "theta": 0.5 * randn(B, T, H).sigmoid(),
        "eta": randn(B, T, H).sigmoid(),
        "alpha": 0.2 * randn(B, T, H).sigmoid(),
        "initial_state": randn(B, H, K, V),
        "initial_momentum": 0.1 * randn(B, H, K, V),
    }


def run(fn, inputs, dtype, chunk_size, seed=1):
    """Outputs, final states and gradients of a fixed random functional of all three."""
    leaves = {n: x.detach().to(dtype).requires_grad_() for n, x in inputs.items()}
    o, (M, S) = fn(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves["theta"],
        leaves["eta"],
        leaves["alpha"],
        chunk_size=chunk_size,
        initial_state=leaves["initial_state"],
        initial_momentum=leaves["initial_momentum"],
        output_final_state=True,
    )
    gen = torch.Generator().manual_seed(seed)
    ups = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype) for x in (o, M, S)]
    loss = sum((x * u).sum() for x, u in zip((o, M, S), ups, strict=True))
    grads = torch.autograd.grad(loss, [leaves[n] for n in NAMES])
    return {"o": o, "M": M, "S": S, **{f"d{n}": g for n, g in zip(NAMES, grads, strict=True)}}


def _cases():
    for dtype in (torch.float64, torch.float32):
        for T in (1, 17, 63, 100):
            for C in (1, 4, 16):
                for H in (1, 3):
                    name = f"{str(dtype)[6:]}-T{T}-C{C}-H{H}"
                    yield pytest.param(dtype, T, C, H, id=name)


@pytest.mark.parametrize("dtype,T,C,H", list(_cases()))
def test_chunk_matches_naive(dtype, T, C, H):
    inputs = make_inputs(2, T, H, 8, 5, seed=T * 10 + H)
    ref = run(titans_linear_naive, inputs, torch.float64, C)
    got = run(titans_linear_chunk, inputs, dtype, C)
    for name, r in ref.items():
        assert_close(f"titans_linear {name}", r.to(dtype), got[name], RTOL[dtype])


def test_extreme_gates_are_finite_and_exact():
    """eta = 0 and alpha = 1 make cumulative products vanish: no 0/0 anywhere."""
    inputs = make_inputs(1, 37, 2, 6, 6, seed=3)
    inputs["eta"][:, 5] = 0.0
    inputs["eta"][:, 20:23] = 0.0
    inputs["alpha"][:, 9] = 1.0
    inputs["alpha"][:, 30] = 1.0
    ref = run(titans_linear_naive, inputs, torch.float64, 8)
    got = run(titans_linear_chunk, inputs, torch.float64, 8)
    for name, r in ref.items():
        assert_close(f"titans_linear extreme {name}", r, got[name], RTOL[torch.float64])


def test_padding_is_neutral():
    """A partial last chunk gives the same state as running exactly to the last token."""
    inputs = make_inputs(2, 21, 2, 4, 4, seed=4)
    args = [inputs[n] for n in NAMES[:6]]
    kw = dict(initial_state=inputs["initial_state"], initial_momentum=inputs["initial_momentum"])
    o16, (M16, S16) = titans_linear(*args, chunk_size=16, output_final_state=True, **kw)
    o_ref, (M_ref, S_ref) = titans_linear_naive(*args, chunk_size=16, output_final_state=True, **kw)
    assert_close("padded o", o_ref, o16, 1e-12)
    assert_close("padded M", M_ref, M16, 1e-12)
    assert_close("padded S", S_ref, S16, 1e-12)


def test_no_momentum_no_forgetting_is_delta_rule():
    """eta = 0, alpha = 0, chunk 1: M_t = M_{t-1} + theta_t k_t (v_t - M^T k_t)^T."""
    from nestdsl.kernels.api import delta_rule

    inputs = make_inputs(2, 29, 3, 8, 4, seed=5)
    q, k, v, theta = (inputs[n] for n in ("q", "k", "v", "theta"))
    zeros = torch.zeros_like(theta)
    M0 = inputs["initial_state"]
    o, (M, _) = titans_linear(
        q, k, v, theta, zeros, zeros, chunk_size=1, initial_state=M0, output_final_state=True
    )
    o_ref, M_ref = delta_rule(q, k, v, theta, initial_state=M0, output_final_state=True)
    assert_close("titans vs delta rule o", o_ref, o, 1e-10)
    assert_close("titans vs delta rule M", M_ref, M, 1e-10)


def test_streaming_equals_one_call():
    inputs = make_inputs(1, 40, 2, 4, 6, seed=6)
    args = [inputs[n] for n in NAMES[:6]]
    kw = dict(initial_state=inputs["initial_state"], initial_momentum=inputs["initial_momentum"])
    o, (M, S) = titans_linear(*args, chunk_size=8, output_final_state=True, **kw)
    o1, (M1, S1) = titans_linear(
        *(x[:, :24] for x in args), chunk_size=8, output_final_state=True, **kw
    )
    o2, (M2, S2) = titans_linear(
        *(x[:, 24:] for x in args),
        chunk_size=8,
        initial_state=M1,
        initial_momentum=S1,
        output_final_state=True,
    )
    assert_close("streamed o", o, torch.cat([o1, o2], dim=1), 1e-12)
    assert_close("streamed M", M, M2, 1e-12)
    assert_close("streamed S", S, S2, 1e-12)


def test_defaults():
    """scale None = K^-0.5, zero initial states, no final state unless asked."""
    inputs = make_inputs(1, 5, 1, 4, 3, seed=7)
    args = [inputs[n] for n in NAMES[:6]]
    o, state = titans_linear(*args)
    assert state is None and o.shape == (1, 5, 1, 3)
    zeros = torch.zeros(1, 1, 4, 3, dtype=torch.float64)
    o_ref, _ = titans_linear_naive(*args, scale=0.5, initial_state=zeros, initial_momentum=zeros)
    assert_close("defaults", o_ref, o, 1e-12)
