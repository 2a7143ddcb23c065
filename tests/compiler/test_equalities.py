"""Special cases are equalities (DESIGN.md): a spec's memory computes the same function
whichever kernel `pick_kernels` chooses, and that function is the paper's recurrence.

Each test builds a one-memory spec, runs the compiled memory on random inputs in float64, and
compares it with an oracle written here from the equations (loops over tokens)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler import run_passes
from nestdsl.compiler.modules.memory_deep import DeepMemory
from nestdsl.compiler.modules.ops import Stream

H, K, V, T, B = 2, 8, 8, 23, 2

SPEC = """
nestdsl: 1
name: one-memory
dims: {{vocab: 256, d: 16, h: {H}, k: {K}, v: {V}}}
levels:
  token: {{every: 1}}
  pretrain: {{every: step, optimizer: {{kind: adamw}}}}
memories:
  M:
    structure: {{kind: {structure}, heads: h, key_dim: k, value_dim: v}}
    level: token
    keys: kk
    values: vv
    objective: {objective}
{extra}
embed: {{vocab: vocab, dim: d}}
blocks:
  - nodes:
      q:  {{op: linear, in: x, out: [h, k]}}
      kk: {{op: linear, in: x, out: [h, k]}}
      vv: {{op: linear, in: x, out: [h, v]}}
      lr: {{op: linear, in: x, out: [h], then: [sigmoid]}}
      g:  {{op: linear, in: x, out: [h], then: [logsigmoid]}}
      mo: {{op: linear, in: x, out: [h], then: [sigmoid]}}
      o:  {{op: read, memory: M, query: q, order: {order}}}
      y:  {{op: linear, in: o, out: d}}
      x1: {{op: add, in: [x, y]}}
    out: x1
"""


def memory_of(structure="matrix", objective="l2", extra="", order="write_then_read"):
    text = SPEC.format(H=H, K=K, V=V, structure=structure, objective=objective,
                       extra=extra, order=order)  # fmt: skip
    checked = nestdsl.check_text(text, "one-memory.yaml")
    plan = run_passes(checked)
    model = nestdsl.compile(checked).double()
    return plan.layers[0].memories["M"], model.layers[0].memories["M"]


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    lr = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    g_ = -torch.rand(B, T, H, generator=g, dtype=torch.float64)
    mo = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    return {"q": q, "kk": k, "vv": v, "lr": lr, "g": g_, "mo": mo}


def run(module, env, order="write_then_read"):
    return module.run(env, [(env["q"], order)], Stream(0, {}), T)[0]


def oracle(env, step, order="write_then_read"):
    """Loop over tokens with state S [B, H, K, V]; `step(S, t) -> S` is the paper's update."""
    S = torch.zeros(B, H, K, V, dtype=torch.float64)
    outs = []
    for t in range(T):
        before = S
        S = step(S, t)
        read = S if order == "write_then_read" else before
        outs.append(torch.einsum("bhkv,bhk->bhv", read, env["q"][:, t]))
    return torch.stack(outs, dim=1)


def close(a, b, tol=1e-10):
    err = (a - b).norm() / b.norm()
    assert err < tol, f"relative error {err:.2e}"


def test_linear_memory_dot_gd_is_linear_attention():
    plan, module = memory_of(objective="dot", extra="    rule: {kind: gd, lr: 1.0}")
    assert plan.kernel == "linear_attention"
    env = inputs()
    q, k, v = env["q"], env["kk"], env["vv"]
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril()  # causal, token t sees s <= t
    expected = torch.einsum("bhts,bshv->bthv", scores, v)
    close(run(module, env), expected)


@pytest.mark.parametrize("order", ["write_then_read", "read_then_write"])
def test_normalize_is_katharopoulos_linear_attention(order):
    """`normalize` with `elu1`: o_t = φ(q_t)^T Σ_s φ(k_s) v_s^T / φ(q_t)^T Σ_s φ(k_s), the
    sums over s <= t (s < t reading before the write), with the lr gate on both sums."""
    extra = "    rule: {kind: gd, lr: lr}\n    feature_map: elu1\n    normalize: true"
    plan, module = memory_of(objective="dot", extra=extra, order=order)
    assert plan.kernel == "linear_attention"
    env = inputs(4)
    q, k = F.elu(env["q"]) + 1, F.elu(env["kk"]) + 1
    scores = torch.einsum("bthk,bshk->bhts", q, k) * env["lr"].permute(0, 2, 1)[:, :, None, :]
    scores = scores.tril(0 if order == "write_then_read" else -1)
    expected = torch.einsum("bhts,bshv->bthv", scores, env["vv"])
    expected = expected / (scores.sum(-1).transpose(1, 2).unsqueeze(-1) + 1e-6)
    close(run(module, env, order), expected)


def test_l2_gd_is_the_delta_rule():
    plan, module = memory_of(extra="    rule: {kind: gd, lr: lr}")
    assert plan.kernel == "delta_rule"
    env = inputs(1)
    k, v, beta = env["kk"], env["vv"], env["lr"]

    def step(S, t):  # S <- S - beta (S^T k - v) k^T, in [K, V] layout
        err = torch.einsum("bhkv,bhk->bhv", S, k[:, t]) - v[:, t]
        return S - beta[:, t, :, None, None] * torch.einsum("bhk,bhv->bhkv", k[:, t], err)

    close(run(module, env), oracle(env, step))


@pytest.mark.parametrize("order", ["write_then_read", "read_then_write"])
def test_l2_gd_local_decay_is_gated_delta_rule(order):
    extra = "    rule: {kind: gd, lr: lr}\n    retention: {kind: l2, mode: local, log_decay: g}"
    plan, module = memory_of(extra=extra, order=order)
    assert plan.kernel == "gated_delta_rule"
    env = inputs(2)
    k, v, beta, g = env["kk"], env["vv"], env["lr"], env["g"]

    def step(S, t):  # decay first, then the delta step at the decayed state
        S = g[:, t].exp()[:, :, None, None] * S
        err = torch.einsum("bhkv,bhk->bhv", S, k[:, t]) - v[:, t]
        return S - beta[:, t, :, None, None] * torch.einsum("bhk,bhv->bhkv", k[:, t], err)

    close(run(module, env, order), oracle(env, step, order))


def test_global_decay_with_momentum_is_titans_and_matches_the_general_kernel():
    extra = ("    rule: {kind: momentum, lr: lr, momentum: mo}\n"
             "    retention: {kind: l2, forget: mo}")  # fmt: skip
    plan, module = memory_of(extra=extra)
    assert plan.kernel == "titans_linear"
    env = inputs(3)
    k, v, theta, eta = env["kk"], env["vv"], env["lr"], env["mo"]
    M = torch.zeros(B, H, K, V, dtype=torch.float64)

    def step(S, t):  # Titans eqs. 10 + 13 with chunk 1: gradient at M_{t-1}
        nonlocal M
        grad = torch.einsum("bhk,bhv->bhkv", k[:, t],
                            torch.einsum("bhkv,bhk->bhv", S, k[:, t]) - v[:, t])  # fmt: skip
        M = eta[:, t, :, None, None] * M - theta[:, t, :, None, None] * grad
        return (1 - eta[:, t, :, None, None]) * S + M

    expected = oracle(env, step)
    close(run(module, env), expected)
    plan.kernel = "deep_memory"  # the general kernel computes the same function
    general = DeepMemory(plan).double()
    close(run(general, env), expected)


def test_cache_softmax_read_is_causal_attention():
    plan, module = memory_of(structure="cache", objective="softmax")
    assert plan.kernel == "softmax_attention"
    env = inputs(4)
    q, k, v = (env[n].transpose(1, 2) for n in ("q", "kk", "vv"))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    close(run(module, env), expected)


def test_frozen_mlp_memory_is_a_feed_forward_layer():
    """A memory on the outer level is an MLP whose weights the optimizer trains (NL §7.1)."""
    text = SPEC.format(H=1, K=16, V=16, structure="matrix", objective="l2", extra="",
                       order="write_then_read")  # fmt: skip
    text = text.replace("structure: {kind: matrix, heads: h, key_dim: k, value_dim: v}",
                        "structure: {kind: mlp, heads: 1, dim: d, expansion: 2}")  # fmt: skip
    text = text.replace("level: token\n    keys: kk\n    values: vv\n    objective: l2",
                        "level: pretrain\n    objective: task\n    init: {kind: learned}")  # fmt: skip
    text = text.replace("query: q,", "query: x,")
    checked = nestdsl.check_text(text, "ffn.yaml")
    plan = run_passes(checked)
    assert plan.layers[0].memories["M"].kernel == "static"
    model = nestdsl.compile(checked).double()
    memory = model.layers[0].memories["M"]
    W1, W2 = memory.initial  # [1, hidden, d], [1, d, hidden]
    x = torch.randn(B, T, 16, dtype=torch.float64)
    expected = x + F.gelu(x @ W1[0].T) @ W2[0].T
    got = memory.run({"x": x}, [(x, "write_then_read")], Stream(0, {}), T)[0]
    close(got, expected)
    assert all(p.requires_grad for p in memory.initial) and W2.abs().max() > 0


def test_a_block_on_a_frozen_level_trains_nothing():
    text = SPEC.format(H=H, K=K, V=V, structure="matrix", objective="l2",
                       extra="    rule: {kind: gd, lr: lr}", order="write_then_read")  # fmt: skip
    text = text.replace("  token: {{every: 1}}".replace("{{", "{").replace("}}", "}"),
                        "  token: {every: 1}\n  frozen: {every: never}")  # fmt: skip
    text = text.replace("blocks:\n  - nodes:", "blocks:\n  - level: frozen\n    nodes:")
    model = nestdsl.compile(nestdsl.check_text(text, "frozen.yaml"))
    layer = model.layers[0]
    assert not any(p.requires_grad for p in layer.ops.parameters())
    assert all(p.requires_grad for p in model.embed.parameters())


def test_a_bias_init_sets_where_a_gate_starts():
    """`bias: {init: b}` starts the bias at b, so with zero weights the gate is sigmoid(b)."""
    text = SPEC.format(H=H, K=K, V=V, structure="matrix", objective="l2",
                       extra="    rule: {kind: gd, lr: lr}", order="write_then_read")  # fmt: skip
    text = text.replace("out: [h], then: [sigmoid]}", "out: [h], bias: {init: -4.0}, then: [sigmoid]}")
    model = nestdsl.compile(nestdsl.check_text(text, "one-memory.yaml"))
    proj = model.layers[0].ops["lr"].proj
    assert torch.equal(proj.bias.detach(), torch.full((H,), -4.0))
    with torch.no_grad():
        proj.weight.zero_()
        gate = model.layers[0].ops["lr"](torch.randn(1, 3, 16), 1, Stream(0, {}))
    torch.testing.assert_close(gate, torch.full((1, 3, H), torch.sigmoid(torch.tensor(-4.0)).item()))
