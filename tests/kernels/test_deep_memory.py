"""Deep in-context memory: chunk (dual) form against the autograd per-token loop, special
cases against the matrix-memory kernels, a hand-written two-token update and streaming."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.deep_memory import (
    ACTIVATIONS,
    MOMENTUM_RULES,
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory,
    init_params,
    initial_weights,
    matrix_memory,
)
from nestdsl.kernels.deep_memory.objectives import objective_grad, objective_loss
from nestdsl.kernels.deep_memory.structure import layer_errors, memory_forward

from .helpers import assert_close

RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
GATES = ("theta", "eta", "alpha")
BASE = MemoryStructure(4, 4, depth=2, expansion=2, activation="gelu", residual=True)
LN = MemoryStructure(4, 4, depth=2, expansion=2, activation="gelu", norm="layernorm")
GATED = MemoryStructure(4, 4, depth=2, expansion=2, activation="silu", gated=True)
DEEP = MemoryStructure(4, 3, depth=3, expansion=2, activation="relu", residual=False)
TANH = MemoryStructure(4, 4, depth=2, expansion=1, activation="tanh", norm="layernorm")
MATRIX = matrix_memory(4, 3)


# Keywords of the call itself; every other keyword of ``call`` is a DeepMemoryOptions field.
CALL_ARGS = ("read", "momentum", "output_final_state", "gamma", "window_prefix", "backend")


def call(*tensors, structure, delta=None, **kw):
    """``deep_memory`` with its options given as keywords, as the tests vary them one by one;
    a float ``delta`` is the options' constant Huber threshold, a tensor the per-token one."""
    fields = {n: kw.pop(n) for n in list(kw) if n not in CALL_ARGS}
    if delta is not None and not torch.is_tensor(delta):
        fields["delta"], delta = delta, None
    return deep_memory(*tensors, DeepMemoryOptions(structure, **fields), delta=delta, **kw)


def make_inputs(structure, B, T, H, seed=0, momentum=False, window=1, prefix=0):
    """float64 leaves: unit keys, theta in (0, 0.5), eta in (0, 1), alpha in (0, 0.2), and
    per-head initial parameters [H, out, in] (expanded over B inside ``run``)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    inputs = {
        "q": randn(B, T, H, structure.d_in),
        "k": F.normalize(randn(B, T, H, structure.d_in), dim=-1),
        "v": randn(B, T, H, structure.d_out),
        "theta": 0.5 * randn(B, T, H).sigmoid(),
        "eta": randn(B, T, H).sigmoid(),
        "alpha": 0.2 * randn(B, T, H).sigmoid(),
    }
    params = init_params(structure, H, generator=gen, dtype=torch.float64)
    inputs.update({f"W{i}": p for i, p in enumerate(params)})
    if momentum:
        inputs.update({f"S{i}": 0.1 * randn(B, *p.shape) for i, p in enumerate(params)})
    if window > 1:  # Omega rule: weights in (0, 1) and `prefix` tokens before the first one
        inputs["gamma"] = randn(B, T, H).sigmoid()
    if prefix:
        inputs["Pk"] = F.normalize(randn(B, prefix, H, structure.d_in), dim=-1)
        inputs["Pv"] = randn(B, prefix, H, structure.d_out)
        inputs["Pg"] = randn(B, prefix, H).sigmoid()
    return inputs


def run(inputs, dtype, structure, backend, seed=1, **kw):
    """Outputs, final states and gradients w.r.t. every leaf of a random functional."""
    leaves = {n: x.detach().to(dtype).requires_grad_() for n, x in inputs.items()}
    B = leaves["q"].shape[0]
    params = [leaves[f"W{i}"] for i in range(len(structure.shapes()))]
    mom = [leaves[n] for n in leaves if n.startswith("S")] or None
    if "gamma" in leaves:
        kw["gamma"] = leaves["gamma"]
    if "Pk" in leaves:
        kw["window_prefix"] = (leaves["Pk"], leaves["Pv"], leaves["Pg"])
    o, (Ws, Ss) = call(
        *(leaves[n] for n in ("q", "k", "v", *GATES)),
        initial_weights(params, B),
        structure=structure,
        momentum=mom,
        output_final_state=True,
        backend=backend,
        **kw,
    )
    outs = {"o": o, **{f"W{i}_T": w for i, w in enumerate(Ws)}}
    outs.update({f"S{i}_T": s for i, s in enumerate(Ss or [])})
    gen = torch.Generator().manual_seed(seed)
    ups = [
        torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype) for x in outs.values()
    ]
    loss = sum((x * u).sum() for x, u in zip(outs.values(), ups, strict=True))
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], materialize_grads=True)
    return {**outs, **{f"d{n}": g for n, g in zip(names, grads, strict=True)}}


def check_against_naive(structure, dtype=torch.float64, B=2, T=13, H=2, C=4, seed=0, prefix=0,
                        **kw):  # fmt: skip
    inputs = make_inputs(structure, B, T, H, seed, momentum=kw.get("rule") in MOMENTUM_RULES,
                         window=kw.get("window", 1), prefix=prefix)  # fmt: skip
    ref = run(inputs, torch.float64, structure, "naive", chunk_size=C, **kw)
    got = run(inputs, dtype, structure, "chunk", chunk_size=C, **kw)
    assert ref.keys() == got.keys()
    for name, r in ref.items():
        assert_close(f"deep_memory {name}", r.to(dtype), got[name], RTOL[dtype])


# Each option varied against the base config (depth-2 residual gelu MLP, l2 objective, gd,
# l2 retention, write_then_read, T = 13 tokens in chunks of 4 so the last one is padded),
# plus a few crossings of the options whose interplay is subtle.
CASES = {
    "base": (BASE, {}),
    "obj-dot": (BASE, dict(objective="dot")),
    "obj-lp3": (BASE, dict(objective="lp", p=3.0)),
    "obj-huber": (BASE, dict(objective="huber", delta=0.3)),
    "rule-momentum": (BASE, dict(rule="momentum")),
    "rule-dgd": (BASE, dict(rule="dgd")),
    "rule-dgd-momentum": (BASE, dict(rule="dgd_momentum")),
    "dgd-momentum-kl-rtw-ln": (LN, dict(rule="dgd_momentum", retention="kl", read="read_then_write")),
    "dgd-momentum-matrix-chunk1": (MATRIX, dict(rule="dgd_momentum", chunk_size=1)),
    "dgd-proximal": (BASE, dict(rule="dgd", dgd_step="proximal")),
    "dgd-proximal-kl-rtw-gated": (GATED, dict(rule="dgd", dgd_step="proximal", retention="kl",
                                             read="read_then_write")),
    "dgd-momentum-proximal-deep": (DEEP, dict(rule="dgd_momentum", dgd_step="proximal")),
    "ret-kl": (BASE, dict(retention="kl", kl_scale=2.0)),
    "ret-lq": (BASE, dict(retention="lq", q_norm=4.0)),
    "read-rtw": (BASE, dict(read="read_then_write")),
    "read-start": (BASE, dict(read="chunk_start")),
    "matrix": (MATRIX, {}),
    "layernorm": (LN, {}),
    "gated": (GATED, {}),
    "depth3-relu": (DEEP, {}),
    "tanh-ln": (TANH, {}),
    "chunk1": (BASE, dict(chunk_size=1, rule="momentum")),
    "chunk16>T": (BASE, dict(chunk_size=16, rule="dgd")),
    "kl-rtw-momentum": (BASE, dict(retention="kl", read="read_then_write", rule="momentum")),
    "kl-wtr-dgd-ln": (LN, dict(retention="kl", rule="dgd")),
    "lq-start-dgd": (BASE, dict(retention="lq", read="chunk_start", rule="dgd")),
    "lq-rtw-momentum-gated": (GATED, dict(retention="lq", read="read_then_write", rule="momentum")),
    "matrix-dgd-rtw": (MATRIX, dict(rule="dgd", read="read_then_write")),
    "huber-momentum-gated": (GATED, dict(objective="huber", rule="momentum")),
    "lp-dgd-ln": (LN, dict(objective="lp", rule="dgd")),
    "dot-momentum-deep": (DEEP, dict(objective="dot", rule="momentum", read="read_then_write")),
    "rule-muon": (BASE, dict(rule="muon")),
    "muon-cubic-rtw": (BASE, dict(rule="muon", ns_kind="cubic", ns_steps=3, read="read_then_write")),
    "muon-matrix-start": (MATRIX, dict(rule="muon", read="chunk_start")),
    "muon-kl-gated": (GATED, dict(rule="muon", retention="kl")),
    "muon-chunk1-deep": (DEEP, dict(rule="muon", chunk_size=1, ns_steps=2)),
    "omega3": (BASE, dict(window=3)),
    "omega6>C-momentum-prefix": (BASE, dict(window=6, rule="momentum", prefix=5)),
    "omega2-muon-prefix1": (GATED, dict(window=2, rule="muon", prefix=1)),
    "omega4-kl-rtw": (LN, dict(window=4, retention="kl", read="read_then_write", prefix=2)),
    "omega3-matrix-start-chunk1": (MATRIX, dict(window=3, read="chunk_start", chunk_size=1)),
    "omega5-huber-lq": (DEEP, dict(window=5, objective="huber", delta=0.5, retention="lq")),
    "obj-huber-norm": (BASE, dict(objective="huber_norm", delta=1.0)),
    "huber-norm-omega3-muon": (GATED, dict(objective="huber_norm", delta=0.8, window=3, rule="muon")),
}
F32_CASES = ("base", "rule-momentum", "rule-dgd", "rule-dgd-momentum", "dgd-proximal", "ret-kl",
             "ret-lq",
             "layernorm", "gated",
             "rule-muon", "omega6>C-momentum-prefix")  # fmt: skip


def _cases():
    for name, (structure, kw) in CASES.items():
        yield pytest.param(structure, kw, torch.float64, id=f"float64-{name}")
    for name in F32_CASES:
        structure, kw = CASES[name]
        yield pytest.param(structure, kw, torch.float32, id=f"float32-{name}")


@pytest.mark.parametrize("structure,kw,dtype", list(_cases()))
def test_chunk_matches_naive(structure, kw, dtype):
    kw = dict(kw)
    C = kw.pop("chunk_size", 4)
    check_against_naive(structure, dtype, C=C, **kw)


@pytest.mark.parametrize("rule", ["momentum", "dgd", "dgd_momentum"])
def test_extreme_gates(rule):
    """eta = 0 and alpha = 1 zero the cumulative products: still finite and exact."""
    inputs = make_inputs(BASE, 1, 19, 2, seed=2, momentum=rule in MOMENTUM_RULES)
    inputs["eta"][:, [3, 8, 9]] = 0.0
    inputs["alpha"][:, [5, 12]] = 1.0
    ref = run(inputs, torch.float64, BASE, "naive", chunk_size=8, rule=rule)
    got = run(inputs, torch.float64, BASE, "chunk", chunk_size=8, rule=rule)
    for name, r in ref.items():
        assert_close(f"extreme gates {name}", r, got[name], RTOL[torch.float64])


def test_matrix_memory_gd_is_delta_rule():
    """depth 1, l2, gd, alpha = 0, chunk 1: W_t = W + theta (v - W k) k^T, the delta rule
    on the state S = W^T with beta = theta (and scale 1)."""
    from nestdsl.kernels.api import delta_rule

    inputs = make_inputs(MATRIX, 2, 21, 3, seed=3)
    q, k, v, theta, eta = (inputs[n] for n in ("q", "k", "v", "theta", "eta"))
    S0 = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    o, (Ws, _) = call(
        q,
        k,
        v,
        theta,
        eta,
        torch.zeros_like(theta),
        [S0.transpose(-1, -2)],
        structure=MATRIX,
        chunk_size=1,
        output_final_state=True,
    )
    o_ref, S_ref = delta_rule(q, k, v, theta, scale=1.0, initial_state=S0, output_final_state=True)
    assert_close("matrix gd vs delta rule o", o_ref, o, 1e-10)
    assert_close("matrix gd vs delta rule state", S_ref, Ws[0].transpose(-1, -2), 1e-10)


def test_matrix_memory_dot_is_linear_attention():
    """depth 1, dot objective, gd, theta = 1, alpha = 0: W_t = W + v k^T (any chunk size,
    the dot gradient does not depend on W). Queries are passed pre-scaled."""
    from nestdsl.kernels.api import linear_attention

    inputs = make_inputs(MATRIX, 2, 21, 3, seed=4)
    q, k, v = (inputs[n] for n in ("q", "k", "v"))
    ones = torch.ones(2, 21, 3, dtype=torch.float64)
    S0 = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    o, (Ws, _) = call(
        q * 4**-0.5,
        k,
        v,
        ones,
        ones,
        0 * ones,
        [S0.transpose(-1, -2)],
        structure=MATRIX,
        objective="dot",
        chunk_size=4,
        output_final_state=True,
    )
    o_ref, S_ref = linear_attention(q, k, v, initial_state=S0, output_final_state=True)
    assert_close("matrix dot vs linear attention o", o_ref, o, 1e-10)
    assert_close("matrix dot vs linear attention state", S_ref, Ws[0].transpose(-1, -2), 1e-10)


def test_matrix_memory_dgd_is_gated_delta_rule():
    """depth 1, dot objective (delta = -v, independent of W), dgd: in transposed form the
    gated delta rule with g = log(1 - alpha), beta = theta / (1 - alpha), values
    -(1 - alpha) delta = (1 - alpha) v (README §5.2). Exact for any chunk size."""
    from nestdsl.kernels.api import gated_delta_rule

    inputs = make_inputs(MATRIX, 2, 21, 3, seed=9)
    q, k, v, theta, eta, alpha = (inputs[n] for n in ("q", "k", "v", *GATES))
    S0 = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    o, (Ws, _) = call(
        q,
        k,
        v,
        theta,
        eta,
        alpha,
        [S0.transpose(-1, -2)],
        structure=MATRIX,
        objective="dot",
        rule="dgd",
        chunk_size=8,
        output_final_state=True,
    )
    keep = 1.0 - alpha
    o_ref, S_ref = gated_delta_rule(
        q,
        k,
        keep[..., None] * v,
        theta / keep,
        keep.log(),
        scale=1.0,
        initial_state=S0,
        output_final_state=True,
    )
    assert_close("matrix dgd vs gated delta rule o", o_ref, o, 1e-10)
    assert_close("matrix dgd vs gated delta rule state", S_ref, Ws[0].transpose(-1, -2), 1e-10)


@pytest.mark.parametrize("rule", ["momentum", "dgd", "dgd_momentum"])
def test_chunk1_equals_hand_written_two_tokens(rule):
    """Two explicit tokens of a depth-2 residual gelu + layer-norm memory, gradients from
    torch.func.grad on a separately written MLP, against the chunk form at chunk 1 (the norm's
    floor not its default, so a kernel that ignored `norm_eps` would fail)."""
    d, h, eps = 4, 8, 0.05
    gen = torch.Generator().manual_seed(5)
    W1 = torch.randn(h, d, generator=gen, dtype=torch.float64) / 2
    W2 = torch.randn(d, h, generator=gen, dtype=torch.float64) / 3
    S1, S2 = (0.1 * torch.randn(*w.shape, generator=gen, dtype=torch.float64) for w in (W1, W2))
    q, k, v = (torch.randn(2, d, generator=gen, dtype=torch.float64) for _ in range(3))
    theta, eta, alpha = torch.tensor([0.3, 0.7]), torch.tensor([0.9, 0.5]), torch.tensor([0.1, 0.2])
    theta, eta, alpha = (x.double() for x in (theta, eta, alpha))

    def mlp(ws, x):
        return x + F.layer_norm(F.gelu(x @ ws[0].T) @ ws[1].T, (d,), eps=eps)

    def loss(ws, x, target):
        return 0.5 * (mlp(ws, x) - target).pow(2).sum()

    ws, ms, outs = [W1, W2], [S1, S2], []
    for t in range(2):
        g = torch.func.grad(loss)(ws, k[t], v[t])
        layer_in = [k[t], F.gelu(ws[0] @ k[t])]  # inputs of W1 and W2 at the old weights
        if rule == "momentum":
            ms = [eta[t] * m - theta[t] * gi for m, gi in zip(ms, g, strict=True)]
            ws = [(1 - alpha[t]) * w + m for w, m in zip(ws, ms, strict=True)]
        elif rule == "dgd_momentum":  # the dgd direction (W a + delta) a^T drives the momentum
            ms = [eta[t] * m - theta[t] * ((w @ a).outer(a) + gi)
                  for m, w, gi, a in zip(ms, ws, g, layer_in, strict=True)]  # fmt: skip
            ws = [(1 - alpha[t]) * w + m for w, m in zip(ws, ms, strict=True)]
        else:
            ws = [
                w @ ((1 - alpha[t]) * torch.eye(w.shape[1], dtype=w.dtype) - theta[t] * a.outer(a))
                - theta[t] * gi
                for w, gi, a in zip(ws, g, layer_in, strict=True)
            ]
        outs.append(mlp(ws, q[t]))

    structure = MemoryStructure(d, d, depth=2, expansion=2, activation="gelu", norm="layernorm",
                                norm_eps=eps)  # fmt: skip

    def seq(x):
        return x.reshape(1, 2, 1, -1)

    o, (Ws, Ss) = call(
        seq(q),
        seq(k),
        seq(v),
        seq(theta)[..., 0],
        seq(eta)[..., 0],
        seq(alpha)[..., 0],
        [W1[None, None], W2[None, None]],
        structure=structure,
        rule=rule,
        chunk_size=1,
        momentum=[S1[None, None], S2[None, None]] if rule in MOMENTUM_RULES else None,
        output_final_state=True,
    )
    assert_close("hand-written o", torch.stack(outs)[None, :, None], o, 1e-12)
    for i in range(2):
        assert_close(f"hand-written W{i + 1}", ws[i], Ws[i][0, 0], 1e-12)
        if rule in MOMENTUM_RULES:
            assert_close(f"hand-written S{i + 1}", ms[i], Ss[i][0, 0], 1e-12)


@pytest.mark.parametrize(
    "structure,kw",
    [
        (BASE, dict(rule="momentum")),
        (LN, dict(retention="kl", rule="gd")),
        (GATED, dict(retention="lq", rule="dgd", read="read_then_write")),
        (DEEP, dict(rule="dgd_momentum")),
        (BASE, dict(rule="gd", retention="kl", lag_token=True)),
        (LN, dict(rule="momentum", objective="lp", retention="lq")),
        (BASE, dict(rule="momentum", retention_mode="local")),
    ],
    ids=["momentum", "kl", "lq-dgd-gated", "dgd-momentum", "memora-lag", "moneta-momentum",
         "local-momentum"],
)
def test_streaming_equals_one_call(structure, kw):
    """Two calls carrying final_state, split at a chunk boundary, equal one call."""
    inputs = make_inputs(structure, 2, 22, 2, seed=6, momentum=kw["rule"] in MOMENTUM_RULES)
    seq = [inputs[n] for n in ("q", "k", "v", *GATES)]
    W0 = initial_weights([inputs[f"W{i}"] for i in range(len(structure.shapes()))], 2)
    mom = [inputs[n] for n in inputs if n.startswith("S")] or None
    common = dict(structure=structure, chunk_size=4, output_final_state=True, **kw)
    o, (W, S) = call(*seq, W0, momentum=mom, **common)
    o1, (W1, S1) = call(*(x[:, :12] for x in seq), W0, momentum=mom, **common)
    o2, (W2, S2) = call(*(x[:, 12:] for x in seq), W1, momentum=S1, **common)
    assert_close("streamed o", o, torch.cat([o1, o2], dim=1), 1e-12)
    for i, (a, b) in enumerate(zip(W, W2, strict=True)):
        assert_close(f"streamed W{i}", a, b, 1e-12)
    for i, (a, b) in enumerate(zip(S or [], S2 or [], strict=True)):
        assert_close(f"streamed S{i}", a, b, 1e-12)


@pytest.mark.parametrize("rule", ["gd", "momentum", "muon"])
def test_omega_streaming_carries_the_window(rule):
    """Split at a chunk boundary, the second call gets the last window - 1 tokens of the first
    as its prefix and continues exactly; without the prefix it does not."""
    inputs = make_inputs(BASE, 2, 22, 2, seed=8, momentum=rule != "gd", window=4)
    seq = [inputs[n] for n in ("q", "k", "v", *GATES)]
    gamma = inputs["gamma"]
    W0 = initial_weights([inputs[f"W{i}"] for i in range(len(BASE.shapes()))], 2)
    mom = [inputs[n] for n in inputs if n.startswith("S")] or None
    common = dict(structure=BASE, chunk_size=4, output_final_state=True, window=4, rule=rule)
    o, (W, _) = call(*seq, W0, momentum=mom, gamma=gamma, **common)
    o1, (W1, S1) = call(*(x[:, :12] for x in seq), W0, momentum=mom,
                               gamma=gamma[:, :12], **common)  # fmt: skip
    prefix = (inputs["k"][:, 9:12], inputs["v"][:, 9:12], gamma[:, 9:12])
    rest = [x[:, 12:] for x in seq]
    o2, (W2, _) = call(*rest, W1, momentum=S1, gamma=gamma[:, 12:],
                              window_prefix=prefix, **common)  # fmt: skip
    assert_close("omega streamed o", o, torch.cat([o1, o2], dim=1), 1e-12)
    assert_close("omega streamed W0", W[0], W2[0], 1e-12)
    o2_cold, _ = call(*rest, W1, momentum=S1, gamma=gamma[:, 12:], **common)
    assert (o2_cold - o2).abs().max() > 1e-6  # the window really reaches back


def test_omega_window_sums_the_gradients_of_its_tokens():
    """gd, chunk 1, window 2, linear memory, by hand: W_t = W - theta_t sum_i gamma_i (W k_i - v_i) k_i^T."""
    structure = matrix_memory(3, 3)
    gen = torch.Generator().manual_seed(9)
    k = F.normalize(torch.randn(1, 3, 1, 3, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 3, 1, 3, generator=gen, dtype=torch.float64)
    theta = torch.tensor([[[0.3], [0.2], [0.4]]], dtype=torch.float64)
    gamma = torch.tensor([[[0.9], [0.5], [0.7]]], dtype=torch.float64)
    W = torch.randn(1, 1, 3, 3, generator=gen, dtype=torch.float64)
    zeros = torch.zeros_like(theta)
    o, (Ws, _) = call(k, k, v, theta, zeros, zeros, [W], structure=structure,
                             chunk_size=1, window=2, gamma=gamma, output_final_state=True)  # fmt: skip
    M = W[0, 0]
    for t in range(3):
        G = sum(gamma[0, i, 0] * torch.outer(M @ k[0, i, 0] - v[0, i, 0], k[0, i, 0])
                for i in range(max(0, t - 1), t + 1))  # fmt: skip
        M = M - theta[0, t, 0] * G
        assert_close(f"omega by hand o{t}", M @ k[0, t, 0], o[0, t, 0], 1e-12)
    assert_close("omega by hand W", M, Ws[0][0, 0], 1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("norm", ["none", "layernorm"])
@pytest.mark.parametrize("objective", ["l2", "huber", "huber_norm"])
def test_closed_form_layer_errors(activation, norm, objective):
    """sum_t delta_{l,t} a_{l,t}^T equals the autograd gradient of the summed loss."""
    for gated in (False, True):
        structure = MemoryStructure(
            3, 3, depth=2, expansion=2, activation=activation, norm=norm, gated=gated
        )
        gen = torch.Generator().manual_seed(7)
        ws = [w[None] for w in init_params(structure, 2, generator=gen, dtype=torch.float64)]
        ws = [w.requires_grad_() for w in ws]
        x = torch.randn(1, 2, 5, 3, generator=gen, dtype=torch.float64)
        target = torch.randn(1, 2, 5, 3, generator=gen, dtype=torch.float64)
        y, cache = memory_forward(structure, ws, x)
        ref = torch.autograd.grad(objective_loss(y, target, objective, delta=0.5).sum(), ws)
        g_y = objective_grad(y, target, objective, delta=0.5)
        deltas = layer_errors(structure, ws, cache, g_y)
        for i, (r, dl, a) in enumerate(zip(ref, deltas, cache.inputs, strict=True)):
            assert_close(f"{activation} {norm} gated={gated} G{i}", r, dl.mT @ a, 1e-12)


def test_gradients_reach_initial_params_and_gates():
    structure = BASE
    out = run(
        make_inputs(structure, 1, 9, 2, seed=8, momentum=True),
        torch.float64,
        structure,
        "chunk",
        chunk_size=4,
        rule="momentum",
    )
    for name in ("dq", "dk", "dv", "dtheta", "deta", "dalpha", "dW0", "dW1", "dS0", "dS1"):
        assert out[name].abs().sum() > 0, name


def test_argument_checks():
    inputs = make_inputs(BASE, 1, 5, 1)
    seq = [inputs[n] for n in ("q", "k", "v", *GATES)]
    W0 = initial_weights([inputs["W0"], inputs["W1"]], 1)
    with pytest.raises(ValueError, match="rule"):
        call(*seq, W0, structure=BASE, rule="adam")
    with pytest.raises(ValueError, match="read"):
        call(*seq, W0, structure=BASE, read="never")
    with pytest.raises(ValueError, match="weights"):
        call(*seq, W0[:1], structure=BASE)
    with pytest.raises(ValueError, match="momentum"):
        call(*seq, W0, structure=BASE, rule="gd", momentum=W0)
    with pytest.raises(ValueError, match="objective"):
        call(*seq, W0, structure=BASE, objective="cosine")
    with pytest.raises(ValueError, match="retention"):
        call(*seq, W0, structure=BASE, retention="l1")
    # (backend="triton" exists; test_triton_deep_memory.py checks that it refuses CPU tensors.)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        call(*seq, W0, structure=BASE, backend="no_such_backend")
    with pytest.raises(ValueError, match="gated"):
        MemoryStructure(4, 4, depth=3, gated=True)
    with pytest.raises(ValueError, match="residual"):
        MemoryStructure(4, 3)


@pytest.mark.parametrize("objective", ["huber", "huber_norm"])
def test_data_dependent_huber_threshold_matches_the_loop(objective):
    """Yaad's delta_t (one threshold per token and head): chunk form vs loop, with gradients."""
    torch.manual_seed(7)
    B, T, H, D = 2, 13, 2, 4
    st = MemoryStructure(D, D, depth=2, expansion=2)
    q, k, v = (torch.randn(B, T, H, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    theta = torch.rand(B, T, H, dtype=torch.float64) * 0.5
    eta, alpha = torch.rand(B, T, H, dtype=torch.float64), torch.rand(B, T, H, dtype=torch.float64) * 0.1
    delta = (torch.rand(B, T, H, dtype=torch.float64) * 0.5 + 0.05).requires_grad_()
    weights = [w.double() for w in initial_weights(init_params(st, H), B)]
    results = []
    for backend in ("chunk", "naive"):
        o, _ = call(q, k, v, theta, eta, alpha, weights, structure=st, objective=objective,
                           delta=delta, rule="momentum", chunk_size=4, output_final_state=True,
                           backend=backend)  # fmt: skip
        results.append((o, torch.autograd.grad((o * o).sum(), [delta, k, v])))
    (o_c, g_c), (o_n, g_n) = results
    assert_close("o", o_n, o_c, 1e-9)
    for name, a, b in zip(("d delta", "d k", "d v"), g_n, g_c):
        assert_close(name, a, b, 1e-9)
    # A smaller threshold clips more: the output really depends on delta.
    o_small, _ = call(q, k, v, theta, eta, alpha, weights, structure=st,
                             objective=objective, delta=delta * 0.1, rule="momentum",
                             chunk_size=4)  # fmt: skip
    assert (o_small - o_c).abs().max() > 1e-6


def test_yaad_switches_on_the_norm_of_the_error():
    """huber_norm's gradient is e while ||e|| <= delta and delta sign(e) beyond (Miras eq. 26),
    for the whole error vector; huber clips each coordinate instead."""
    y = torch.tensor([[0.5, -0.2, 0.1], [3.0, -0.1, 0.2]], dtype=torch.float64)
    v = torch.zeros_like(y)
    g = objective_grad(y, v, "huber_norm", delta=1.0)
    torch.testing.assert_close(g[0], y[0])  # ||e|| = 0.55: the l2 gradient
    torch.testing.assert_close(g[1], torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(objective_grad(y, v, "huber", delta=1.0)[1],
                               torch.tensor([1.0, -0.1, 0.2], dtype=torch.float64))  # fmt: skip
    loss = objective_loss(y.requires_grad_(), v, "huber_norm", delta=1.0)
    torch.testing.assert_close(torch.autograd.grad(loss.sum(), y)[0], g)


def test_proximal_dgd_is_the_exact_minimizer_of_nl_eq_57():
    """dgd_step='proximal', chunk 1, no retention: every update is
    argmin_W 1/2 ||W x - u||^2 + 1/(2 eta) ||W - W_t||^2 with u = -grad_y L(W_t; x) (NL eq. 57),
    solved here from its normal equations W (I + eta x x^T) = W_t + eta u x^T; keys are not
    normalized, so the step differs from the explicit one."""
    structure = matrix_memory(3, 2)
    gen = torch.Generator().manual_seed(10)
    k = 2.0 * torch.randn(1, 4, 1, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 4, 1, 2, generator=gen, dtype=torch.float64)
    theta = torch.tensor([[[0.3], [0.9], [0.5], [1.5]]], dtype=torch.float64)
    W0 = torch.randn(1, 1, 2, 3, generator=gen, dtype=torch.float64)
    zeros = torch.zeros_like(theta)
    o, (Ws, _) = call(k, k, v, theta, zeros, zeros, [W0], structure=structure, rule="dgd",
                             chunk_size=1, dgd_step="proximal", output_final_state=True)  # fmt: skip
    W = W0[0, 0]
    for t in range(4):
        x, eta = k[0, t, 0], theta[0, t, 0]
        u = -(W @ x - v[0, t, 0])
        lhs = torch.eye(3, dtype=torch.float64) + eta * torch.outer(x, x)
        W = torch.linalg.solve(lhs, (W + eta * torch.outer(u, x)).T).T  # W lhs = rhs (lhs symmetric)
        assert_close(f"proximal dgd o{t}", W @ k[0, t, 0], o[0, t, 0], 1e-12)
    assert_close("proximal dgd W", W, Ws[0][0, 0], 1e-12)


def test_the_kernels_norm_floor_is_the_specs_default():
    from nestdsl.spec.memory import NORM_EPS, MLPStructure

    assert MemoryStructure(4, 4, norm="layernorm").norm_eps == NORM_EPS
    assert MLPStructure(kind="mlp", dim=4).norm_eps == NORM_EPS
