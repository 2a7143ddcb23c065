"""Omega window weights that depend on t (Atlas eq. 9: γ_i^(t) = gamma_i * omega_t[t - i]):
the chunk form's per-token weighted band against the autograd loop (outputs, states and
gradients of every input, omega included), a hand-written update, streaming across a window
boundary, and the differential (omega = 1 is today's window; another omega changes it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.deep_memory import (
    DeepMemoryOptions,
    deep_memory,
    initial_weights,
    matrix_memory,
)
from nestdsl.kernels.deep_memory.triton import unsupported

from .helpers import assert_close
from .test_deep_memory import BASE, GATED, GATES, MATRIX, make_inputs


def run(inputs, structure, backend, omega, read="write_then_read", seed=1, **fields):
    """Outputs, final states and the gradients of a random functional w.r.t. every leaf."""
    leaves = {n: x.detach().clone().requires_grad_() for n, x in inputs.items()}
    leaves["omega"] = omega.detach().clone().requires_grad_()
    B = leaves["q"].shape[0]
    params = [leaves[f"W{i}"] for i in range(len(structure.shapes()))]
    mom = [leaves[n] for n in leaves if n.startswith("S")] or None
    prefix = (leaves["Pk"], leaves["Pv"], leaves["Pg"]) if "Pk" in leaves else None
    o, (Ws, Ss) = deep_memory(
        *(leaves[n] for n in ("q", "k", "v", *GATES)), initial_weights(params, B),
        DeepMemoryOptions(structure, **fields), read=read, momentum=mom, output_final_state=True,
        gamma=leaves.get("gamma"), window_prefix=prefix, omega=leaves["omega"], backend=backend,
    )  # fmt: skip
    outs = {"o": o, **{f"W{i}_T": w for i, w in enumerate(Ws)}}
    outs.update({f"S{i}_T": s for i, s in enumerate(Ss or [])})
    gen = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum()
               for x in outs.values())  # fmt: skip
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], materialize_grads=True)
    return {**outs, **{f"d{n}": g for n, g in zip(names, grads, strict=True)}}


def omega_of(inputs, window, seed=3):
    B, T, H = inputs["theta"].shape
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, H, window, generator=gen, dtype=torch.float64)


CASES = {
    "gd": (BASE, dict(window=3), 0),
    "gd-window>chunk-prefix": (BASE, dict(window=6), 5),
    "momentum-prefix": (BASE, dict(window=4, rule="momentum"), 2),
    "muon-prefix": (GATED, dict(window=3, rule="muon"), 2),
    "matrix-momentum-chunk1": (MATRIX, dict(window=3, rule="momentum", chunk_size=1), 1),
    "gd-kl-read-then-write": (BASE, dict(window=2, retention="kl", read="read_then_write"), 1),
    "gd-window1": (BASE, dict(window=1), 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_chunk_form_matches_the_loop_with_gradients(name):
    structure, kw, prefix = CASES[name]
    window = kw["window"]
    read = kw.pop("read", "write_then_read")
    fields = {"chunk_size": 4, **kw}
    inputs = make_inputs(structure, 2, 13, 2, seed=5, momentum=kw.get("rule") in (
        "momentum", "muon"), window=max(window, 2), prefix=prefix)  # fmt: skip
    omega = omega_of(inputs, window)
    ref = run(inputs, structure, "naive", omega, read, **fields)
    got = run(inputs, structure, "chunk", omega, read, **fields)
    assert ref.keys() == got.keys() and "domega" in ref
    for key, r in ref.items():
        assert_close(f"omega {name} {key}", r, got[key], 1e-9)


def test_omega_of_ones_is_the_window_and_another_omega_changes_it():
    inputs = make_inputs(BASE, 2, 13, 2, seed=6, window=3)
    seq = [inputs[n] for n in ("q", "k", "v", *GATES)]
    W0 = initial_weights([inputs["W0"], inputs["W1"]], 2)
    options = DeepMemoryOptions(BASE, chunk_size=4, window=3)
    plain, _ = deep_memory(*seq, W0, options, gamma=inputs["gamma"])
    ones = torch.ones(*inputs["theta"].shape, 3, dtype=torch.float64)
    assert_close("omega = 1", plain, deep_memory(*seq, W0, options, gamma=inputs["gamma"],
                                                 omega=ones)[0], 1e-12)  # fmt: skip
    other, _ = deep_memory(*seq, W0, options, gamma=inputs["gamma"], omega=omega_of(inputs, 3))
    assert (other - plain).abs().max() > 1e-3


def test_omega_by_hand():
    """gd, chunk 1, window 2, linear memory: W_t = W - theta_t sum_i gamma_i omega_t[t-i] (W k_i - v_i) k_i^T."""
    gen = torch.Generator().manual_seed(9)
    k = F.normalize(torch.randn(1, 3, 1, 3, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 3, 1, 3, generator=gen, dtype=torch.float64)
    theta = torch.tensor([[[0.3], [0.2], [0.4]]], dtype=torch.float64)
    gamma = torch.tensor([[[0.9], [0.5], [0.7]]], dtype=torch.float64)
    omega = torch.rand(1, 3, 1, 2, generator=gen, dtype=torch.float64)
    W = torch.randn(1, 1, 3, 3, generator=gen, dtype=torch.float64)
    zeros = torch.zeros_like(theta)
    options = DeepMemoryOptions(matrix_memory(3, 3), chunk_size=1, window=2)
    for backend in ("naive", "chunk"):
        o, (Ws, _) = deep_memory(k, k, v, theta, zeros, zeros, [W], options, gamma=gamma,
                                 omega=omega, output_final_state=True, backend=backend)  # fmt: skip
        M = W[0, 0]
        for t in range(3):
            G = sum(gamma[0, i, 0] * omega[0, t, 0, t - i]
                    * torch.outer(M @ k[0, i, 0] - v[0, i, 0], k[0, i, 0])
                    for i in range(max(0, t - 1), t + 1))  # fmt: skip
            M = M - theta[0, t, 0] * G
            assert_close(f"{backend} read {t}", M @ k[0, t, 0], o[0, t, 0], 1e-12)
        assert_close(f"{backend} final", M, Ws[0][0, 0], 1e-12)


@pytest.mark.parametrize("rule", ["gd", "momentum", "muon"])
def test_streaming_across_a_window_boundary(rule):
    """Split at a chunk boundary with the last window - 1 tokens carried as the prefix
    (omega belongs to the token that updates, so the prefix needs only k, v, gamma)."""
    structure = GATED if rule == "muon" else BASE
    inputs = make_inputs(structure, 2, 22, 2, seed=8, momentum=rule != "gd", window=4)
    seq = [inputs[n] for n in ("q", "k", "v", *GATES)]
    gamma, omega = inputs["gamma"], omega_of(inputs, 4)
    W0 = initial_weights([inputs[f"W{i}"] for i in range(len(structure.shapes()))], 2)
    mom = [inputs[n] for n in inputs if n.startswith("S")] or None
    options = DeepMemoryOptions(structure, chunk_size=4, window=4, rule=rule)
    common = dict(output_final_state=True)
    o, (W, _) = deep_memory(*seq, W0, options, momentum=mom, gamma=gamma, omega=omega, **common)
    o1, (W1, S1) = deep_memory(*(x[:, :12] for x in seq), W0, options, momentum=mom,
                               gamma=gamma[:, :12], omega=omega[:, :12], **common)  # fmt: skip
    prefix = (inputs["k"][:, 9:12], inputs["v"][:, 9:12], gamma[:, 9:12])
    o2, (W2, _) = deep_memory(*(x[:, 12:] for x in seq), W1, options, momentum=S1,
                              gamma=gamma[:, 12:], omega=omega[:, 12:], window_prefix=prefix,
                              **common)  # fmt: skip
    assert_close("omega streamed o", o, torch.cat([o1, o2], dim=1), 1e-12)
    assert_close("omega streamed W", W[0], W2[0], 1e-12)


def test_triton_falls_back_with_the_reason():
    options = DeepMemoryOptions(BASE, chunk_size=4)
    omega = torch.ones(1, 4, 1, 1)
    assert "depend on t" in unsupported(options, torch.float32, omega=omega)


def test_omega_of_the_wrong_shape_is_rejected():
    inputs = make_inputs(BASE, 1, 5, 2, window=3)
    seq = [inputs[n] for n in ("q", "k", "v", *GATES)]
    W0 = initial_weights([inputs["W0"], inputs["W1"]], 1)
    with pytest.raises(ValueError, match="omega must be"):
        deep_memory(*seq, W0, DeepMemoryOptions(BASE, window=3), omega=torch.ones(1, 5, 2, 2))
