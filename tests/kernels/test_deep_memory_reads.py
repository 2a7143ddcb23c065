"""Deep memory reads inside a chunk (Miras §5), Memora's lag token (Miras eq. 30) and local
retention (Miras's ``||W - r_t W_{t-1}||^2``, Gated DeltaNet): chunk form against the loop
oracle in float64, and behaviours a wrong kernel would miss."""

from __future__ import annotations

import pytest
import torch

from nestdsl.kernels.deep_memory import MemoryStructure, initial_weights

from .helpers import assert_close
from .test_deep_memory import BASE, GATED, LN, MATRIX, call, check_against_naive, make_inputs

MONETA = dict(objective="lp", p=3.0, retention="lq", q_norm=4.0)
MEMORA = dict(retention="kl", kl_scale=1.0)
# Every Miras retention / objective whose reads could go blind inside a chunk.
MIRAS = {
    "moneta": MONETA,
    "memora": MEMORA,
    "memora-lag": dict(MEMORA, lag_token=True),
    "yaad": dict(objective="huber_norm", delta=0.5),
    "lp": dict(objective="lp", p=3.0),
    "huber": dict(objective="huber", delta=0.3),
    "lq-l2": dict(retention="lq", q_norm=3.0),
}


def _outputs(kw, v_shift=0.0, read="write_then_read", T=20, C=16, backend="chunk"):
    inputs = make_inputs(LN, 1, T, 2, seed=11)
    v = inputs["v"].clone()
    # A different write at t = 3 (not a constant shift: the layer norm's backward ignores those).
    v[:, 3] += v_shift * torch.linspace(-1.0, 2.0, v.shape[-1], dtype=v.dtype)
    W0 = initial_weights([inputs["W0"], inputs["W1"]], 1)
    o, _ = call(inputs["q"], inputs["k"], v, inputs["theta"], inputs["eta"], inputs["alpha"],
                W0, structure=LN, chunk_size=C, read=read, backend=backend, **kw)  # fmt: skip
    return o


@pytest.mark.parametrize("backend", ["chunk", "naive"])
@pytest.mark.parametrize("read", ["write_then_read", "read_then_write"])
@pytest.mark.parametrize("name", list(MIRAS))
def test_a_write_at_t3_is_read_at_t4(name, read, backend):
    """Chunks of 16: the token after a write sees it (Miras skips only the normalization
    inside a chunk), the tokens before it do not."""
    kw = MIRAS[name]
    base, moved = _outputs(kw, 0.0, read, backend=backend), _outputs(kw, 1.0, read, backend=backend)
    change = (moved - base).abs().amax(dim=(0, 2, 3))  # [T]
    assert change[:4].max() == 0 if read == "read_then_write" else change[:3].max() == 0
    assert change[4] > 1e-4, f"{name}: the read at t=4 ignores the write at t=3"


CASES = {
    "moneta": (LN, dict(MONETA)),
    "moneta-rtw-momentum": (BASE, dict(MONETA, read="read_then_write", rule="momentum")),
    "moneta-muon-gated": (GATED, dict(MONETA, rule="muon")),
    "lq-dgd-gated": (GATED, dict(retention="lq", rule="dgd")),
    "memora": (LN, dict(MEMORA)),
    "memora-rtw-dgd-momentum": (BASE, dict(MEMORA, read="read_then_write", rule="dgd_momentum")),
    "memora-muon-rtw": (BASE, dict(MEMORA, rule="muon", read="read_then_write")),
    "memora-lag": (LN, dict(MEMORA, lag_token=True)),
    "memora-lag-rtw-momentum": (BASE, dict(MEMORA, lag_token=True, read="read_then_write",
                                           rule="momentum")),  # fmt: skip
    "memora-lag-start": (GATED, dict(MEMORA, lag_token=True, read="chunk_start")),
    "memora-lag-muon": (BASE, dict(MEMORA, lag_token=True, rule="muon")),
    "memora-lag-dgd-proximal": (BASE, dict(MEMORA, lag_token=True, rule="dgd",
                                           dgd_step="proximal")),  # fmt: skip
    "memora-lag-chunk1": (BASE, dict(MEMORA, lag_token=True, chunk_size=1)),
    "memora-lag-chunk5>T/3": (MATRIX, dict(MEMORA, lag_token=True, chunk_size=5)),
    "local": (BASE, dict(retention_mode="local")),
    "local-momentum-ln": (LN, dict(retention_mode="local", rule="momentum")),
    "local-muon-gated-rtw": (GATED, dict(retention_mode="local", rule="muon",
                                         read="read_then_write")),  # fmt: skip
    "local-huber-deep": (MemoryStructure(4, 3, depth=3, expansion=2, activation="relu",
                                         residual=False),
                         dict(retention_mode="local", objective="huber", delta=0.3)),  # fmt: skip
    "local-matrix-chunk1": (MATRIX, dict(retention_mode="local", chunk_size=1)),
}


@pytest.mark.parametrize("structure,kw", CASES.values(), ids=list(CASES))
def test_chunk_matches_naive(structure, kw):
    """T = 13 in chunks of 4 (the last one padded): outputs, final state and the gradients of
    every input, the initial weights and momentum, in float64."""
    kw = dict(kw)
    C = kw.pop("chunk_size", 4)
    check_against_naive(structure, torch.float64, C=C, **kw)


def test_memora_float32():
    # BASE: with a layer norm over kl's simplex rows even the float32 loop is off by 2e-4.
    check_against_naive(BASE, torch.float32, C=4, **dict(MEMORA, lag_token=True))


def _run_memora(T, C, lag):
    inputs = make_inputs(BASE, 2, T, 2, seed=12)
    seq = [inputs[n] for n in ("q", "k", "v", "theta", "eta", "alpha")]
    W0 = initial_weights([inputs["W0"], inputs["W1"]], 2)
    return call(*seq, W0, structure=BASE, chunk_size=C, lag_token=lag, output_final_state=True,
                **MEMORA)  # fmt: skip


def test_lag_token_takes_the_exact_step_and_anchors_the_chunk_after_it():
    """Miras eq. 30: the lag token's step is the exact one (softmax of the updated logits), and
    the chunk's next gradient is taken at the weights after it. So the state after two tokens
    equals the per-token recurrence; the third token's gradient is still at that anchor."""
    _, (W_lag, _) = _run_memora(2, 4, True)
    _, (W_exact, _) = _run_memora(2, 1, False)
    _, (W_plain, _) = _run_memora(2, 4, False)
    for a, b in zip(W_exact, W_lag, strict=True):
        assert_close("lag: two tokens are exact", a, b, 1e-12)
    assert max((a - b).abs().max() for a, b in zip(W_exact, W_plain, strict=True)) > 1e-6
    _, (W_lag3, _) = _run_memora(3, 4, True)
    _, (W_exact3, _) = _run_memora(3, 1, False)
    assert max((a - b).abs().max() for a, b in zip(W_exact3, W_lag3, strict=True)) > 1e-6


def test_lag_token_with_chunks_of_two_is_the_per_token_recurrence():
    """Chunks of 2 with a lag token are two boundaries per chunk: every token is exact."""
    o_lag, (W_lag, _) = _run_memora(9, 2, True)
    o_exact, (W_exact, _) = _run_memora(9, 1, False)
    assert_close("lag C=2 o", o_exact, o_lag, 1e-12)
    for a, b in zip(W_exact, W_lag, strict=True):
        assert_close("lag C=2 W", a, b, 1e-12)


def test_local_retention_on_a_matrix_is_gated_delta_rule():
    """l2 objective, gd, chunk 1, local retention: W_t = r W - theta (r W k - v) k^T, i.e. in
    transposed form S <- r S; S <- S + theta k (v - S^T k)^T: Gated DeltaNet with
    g = log(1 - alpha), beta = theta (scale 1)."""
    from nestdsl.kernels.api import gated_delta_rule

    inputs = make_inputs(MATRIX, 2, 17, 3, seed=13)
    q, k, v, theta, eta, alpha = (inputs[n] for n in ("q", "k", "v", "theta", "eta", "alpha"))
    S0 = torch.randn(2, 3, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    o, (Ws, _) = call(q, k, v, theta, eta, alpha, [S0.transpose(-1, -2)], structure=MATRIX,
                      chunk_size=1, retention_mode="local", output_final_state=True)  # fmt: skip
    o_ref, S_ref = gated_delta_rule(q, k, v, theta, (1.0 - alpha).log(), scale=1.0,
                                    initial_state=S0, output_final_state=True)  # fmt: skip
    assert_close("local matrix vs gated delta rule o", o_ref, o, 1e-10)
    assert_close("local matrix vs gated delta rule S", S_ref, Ws[0].transpose(-1, -2), 1e-10)
    o_global, _ = call(q, k, v, theta, eta, alpha, [S0.transpose(-1, -2)], structure=MATRIX,
                       chunk_size=1)  # fmt: skip
    assert (o_global - o).abs().max() > 1e-6  # global retention is a different memory


def test_local_retention_without_decay_is_global():
    inputs = make_inputs(LN, 1, 11, 2, seed=14)
    inputs["alpha"] = torch.zeros_like(inputs["alpha"])
    seq = [inputs[n] for n in ("q", "k", "v", "theta", "eta", "alpha")]
    W0 = initial_weights([inputs["W0"], inputs["W1"]], 1)
    o_local, _ = call(*seq, W0, structure=LN, chunk_size=4, retention_mode="local", rule="momentum")
    o_global, _ = call(*seq, W0, structure=LN, chunk_size=4, rule="momentum")
    assert_close("local == global at alpha = 0", o_global, o_local, 1e-12)
