"""Per-channel gates (Miras §5.4, ATLAS eq. 11's diag(α_t)): a gate of shape `[heads,
value_dim]` gives every row of the state (one value channel) its own step size and decay.

Each matrix kernel is checked in float64 against a per-token loop written here from the
equations (state S [B, H, K, V]: a per-channel gate scales the V axis), the compiled memory is
checked against the same memory with per-head gates (equal channels match, unequal ones
differ), gradients through the kernels against autograd through the loop, and a sequence fed
in pieces against one pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler import run_passes
from nestdsl.compiler.modules import channels
from nestdsl.compiler.modules.memory_deep import DeepMemory
from nestdsl.errors import SpecError

from .test_equalities import SPEC, B, H, K, T, V, close, oracle, run

# Per-channel twins of the per-head gate tensors of test_equalities' spec.
WIDE = """      lrc: {op: linear, in: x, out: [h, v], then: [sigmoid]}
      gc: {op: linear, in: x, out: [h, v], then: [logsigmoid]}
      moc: {op: linear, in: x, out: [h, v], then: [sigmoid]}
      fc: {op: linear, in: x, out: [h, v], then: [sigmoid]}
      o:"""


def spec_text(extra, objective="l2", structure="matrix", order="write_then_read", every=1):
    text = SPEC.format(H=H, K=K, V=V, structure=structure, objective=objective, extra=extra,
                       order=order).replace("      o:", WIDE)  # fmt: skip
    return text.replace("token: {every: 1}", f"token: {{every: {every}}}")


def memory_of(extra, **kw):
    checked = nestdsl.check_text(spec_text(extra, **kw), "channels.yaml")
    plan = run_passes(checked)
    model = nestdsl.compile(checked).double()
    return plan.layers[0].memories["M"], model.layers[0].memories["M"]


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, f=torch.rand):
        return f(*shape, generator=g, dtype=torch.float64)

    k = F.normalize(rand(B, T, H, K, f=torch.randn), dim=-1)
    env = {"q": rand(B, T, H, K, f=torch.randn), "kk": k, "vv": rand(B, T, H, V, f=torch.randn)}
    env |= {"lr": rand(B, T, H), "g": -rand(B, T, H), "mo": rand(B, T, H)}
    env |= {"lrc": rand(B, T, H, V), "gc": -rand(B, T, H, V), "moc": rand(B, T, H, V)}
    env["fc"] = 0.2 * rand(B, T, H, V)
    return env


def row(x, t):
    """A per-channel gate at token t as a [B, H, 1, V] factor on the state."""
    return x[:, t, :, None, :]


def delta_step(env, decay=None):
    k, v, beta = env["kk"], env["vv"], env["lrc"]

    def step(S, t):  # S_t = diag(α_t) S_{t-1} (I - diag(β_t) k k^T) + diag(β_t) v k^T per row
        if decay is not None:
            S = row(decay, t).exp() * S
        err = torch.einsum("bhkv,bhk->bhv", S, k[:, t]) - v[:, t]  # [B, H, V]
        return S - row(beta, t) * torch.einsum("bhk,bhv->bhkv", k[:, t], err)

    return step


def test_per_channel_delta_rule_matches_the_loop():
    plan, module = memory_of("    rule: {kind: gd, lr: lrc}")
    assert plan.kernel == "delta_rule" and plan.options.channel_gates == ("lr",)
    env = inputs(1)
    close(run(module, env), oracle(env, delta_step(env)))


@pytest.mark.parametrize("order", ["write_then_read", "read_then_write"])
def test_per_channel_gated_delta_rule_matches_the_loop(order):
    extra = "    rule: {kind: gd, lr: lrc}\n    retention: {kind: l2, mode: local, log_decay: gc}"
    plan, module = memory_of(extra, order=order)
    assert plan.kernel == "gated_delta_rule"
    env = inputs(2)
    close(run(module, env, order), oracle(env, delta_step(env, env["gc"]), order))


def test_per_channel_linear_attention_matches_the_loop():
    plan, module = memory_of("    rule: {kind: gd, lr: lrc}", objective="dot")
    assert plan.kernel == "linear_attention"
    env = inputs(3)
    k, v, lr = env["kk"], env["vv"], env["lrc"]

    def step(S, t):  # S_t = S_{t-1} + k_t (θ_t ⊙ v_t)^T
        return S + torch.einsum("bhk,bhv->bhkv", k[:, t], lr[:, t] * v[:, t])

    close(run(module, env), oracle(env, step))


def titans_step(env):
    k, v, theta, eta, alpha = env["kk"], env["vv"], env["lrc"], env["moc"], env["fc"]
    M = torch.zeros(B, H, K, V, dtype=torch.float64)

    def step(S, t):  # Titans eqs. 10 + 13, every gate diag over the value channels
        nonlocal M
        err = torch.einsum("bhkv,bhk->bhv", S, k[:, t]) - v[:, t]
        M = row(eta, t) * M - row(theta, t) * torch.einsum("bhk,bhv->bhkv", k[:, t], err)
        return (1 - row(alpha, t)) * S + M

    return step


TITANS = ("    rule: {kind: momentum, lr: lrc, momentum: moc}\n"
          "    retention: {kind: l2, forget: fc}")  # fmt: skip


def test_per_channel_titans_matches_the_loop_on_both_kernels():
    plan, module = memory_of(TITANS)
    assert plan.kernel == "titans_linear"
    assert set(plan.options.channel_gates) == {"lr", "momentum", "forget"}
    env = inputs(4)
    expected = oracle(env, titans_step(env))
    close(run(module, env), expected)
    plan.kernel = "deep_memory"  # the general kernel, split per channel, computes the same
    close(run(DeepMemory(plan).double(), env), expected)


def test_split_equivalence_on_the_kernel():
    """Per-head gates run split per channel equal the per-head kernel (the layout is right)."""
    from nestdsl.kernels import api

    env = inputs(5)
    q, k, v, beta, g = env["q"], env["kk"], env["vv"], env["lr"], env["g"]
    S0 = torch.randn(B, H, K, V, dtype=torch.float64)
    o, S = api.gated_delta_rule(q, k, v, beta, g, scale=1.0, initial_state=S0,
                                output_final_state=True)  # fmt: skip
    o2, S2 = api.gated_delta_rule(
        channels.repeat_keys(q, V), channels.repeat_keys(k, V), channels.split_values(v),
        channels.split_gate(beta, V), channels.split_gate(g, V), scale=1.0,
        initial_state=channels.split_kv_state(S0), output_final_state=True)  # fmt: skip
    close(channels.merge_out(o2, H), o)
    close(channels.merge_kv_state(S2, H), S)


@pytest.mark.parametrize("kind", ["gated_delta_rule", "chunked"])
def test_equal_channels_match_per_head_and_unequal_ones_differ(kind):
    """Differential: a per-channel gate whose channels are equal is the per-head gate."""
    every = 1 if kind == "gated_delta_rule" else 4
    rule = "    rule: {kind: gd, lr: %s}\n    retention: {kind: l2, mode: local, log_decay: %s}"
    if kind == "chunked":  # a chunked memory runs on the general deep_memory kernel
        rule = "    rule: {kind: gd, lr: %s}\n    retention: {kind: l2, forget: %s}"
    head_plan, per_head = memory_of(rule % ("lr", "mo"), every=every)
    chan_plan, per_chan = memory_of(rule % ("lrc", "moc"), every=every)
    assert head_plan.kernel == chan_plan.kernel == kind.replace("chunked", "deep_memory")
    env = inputs(6)
    env["lrc"] = env["lr"].unsqueeze(-1).expand(B, T, H, V)
    env["moc"] = env["mo"].unsqueeze(-1).expand(B, T, H, V)
    close(run(per_chan, env), run(per_head, env))
    env["lrc"] = env["lrc"] * torch.linspace(0.2, 1.0, V, dtype=torch.float64)
    assert (run(per_chan, env) - run(per_head, env)).abs().max() > 1e-3


@pytest.mark.parametrize("rule", [
    "    rule: {kind: gd, lr: %s}\n    retention: {kind: l2, forget: %s}",
    "    rule: {kind: dgd, lr: %s}\n    retention: {kind: l2, forget: %s}",
    "    rule: {kind: momentum, lr: %s, momentum: 0.5}\n    retention: {kind: kl, forget: %s}",
], ids=["gd-forget", "dgd", "momentum-kl"])  # fmt: skip
def test_chunked_per_channel_memory_matches_rows_run_alone(rule):
    """The general kernel with chunks (every 4): channel c of the per-channel memory equals a
    per-head memory fed only value channel c and that channel's gates (rows are independent)."""
    _, per_chan = memory_of(rule % ("lrc", "moc"), every=4)
    env = inputs(7)
    got = run(per_chan, env)
    assert per_chan.plan.kernel == "deep_memory"
    _, per_head = memory_of(rule % ("lr", "mo"), every=4)
    for c in (0, V - 1):
        one = dict(env, vv=env["vv"][..., c : c + 1].expand(B, T, H, V),
                   lr=env["lrc"][..., c], mo=env["moc"][..., c])  # fmt: skip
        close(got[..., c], run(per_head, one)[..., c])


def test_gradients_through_the_kernel_match_autograd_through_the_loop():
    extra = "    rule: {kind: gd, lr: lrc}\n    retention: {kind: l2, mode: local, log_decay: gc}"
    _, module = memory_of(extra)
    env = inputs(8)
    grads = []
    for f in (lambda e: run(module, e), lambda e: oracle(e, delta_step(e, e["gc"]))):
        leaves = {n: env[n].clone().requires_grad_() for n in ("lrc", "gc", "vv", "kk")}
        out = f(dict(env, **leaves))
        out.pow(2).sum().backward()
        grads.append([leaves[n].grad for n in sorted(leaves)])
    for a, b in zip(*grads):
        close(a, b, 1e-9)


@pytest.mark.parametrize("every,extra", [
    (1, "    rule: {kind: gd, lr: lrc}\n    retention: {kind: l2, mode: local, log_decay: gc}"),
    (4, "    rule: {kind: gd, lr: lrc}\n    retention: {kind: l2, forget: moc}"),
])  # fmt: skip
def test_streaming_pieces_equal_one_pass(every, extra):
    checked = nestdsl.check_text(spec_text(extra, every=every), "channels.yaml")
    model = nestdsl.compile(checked).double().eval()
    tokens = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(0))
    whole, _ = model(tokens)
    state, parts = None, []
    for a, b in ((0, 6), (6, 7), (7, 19)):
        out, state = model(tokens[:, a:b], state)
        parts.append(out)
    close(torch.cat(parts, 1), whole)


@pytest.mark.parametrize("extra,structure,text", [
    ("    rule: {kind: gd, lr: lrc}", "mlp", "hidden layer has expansion x dim rows"),
    ("    rule: {kind: muon, lr: lrc, momentum: 0.9}", "matrix", "Muon orthogonalizes"),
    ("    rule: {kind: gd, lr: lrc}\n    retention: {kind: lq, q: 4, forget: 0.1}", "matrix",
     "lq retention normalizes"),
    ("    rule: {kind: gd, lr: lr}", "huber", "`delta` is per channel"),
])  # fmt: skip
def test_unlowerable_per_channel_gates_are_positioned_errors(extra, structure, text):
    if structure == "huber":
        spec = spec_text(extra, objective="{kind: huber, delta: lrc}")
    else:
        spec = spec_text(extra, structure=structure)
    if structure == "mlp":
        spec = spec.replace("{kind: mlp, heads: h, key_dim: k, value_dim: v}",
                            "{kind: mlp, heads: h, dim: k, expansion: 2}\n    init: {kind: learned}")  # fmt: skip
    with pytest.raises(SpecError) as err:
        run_passes(nestdsl.check_text(spec, "channels.yaml"))
    diags = [d for d in err.value.diagnostics if d.code == "not-lowered"]
    assert diags and text in diags[0].message and diags[0].hint
    assert diags[0].pos is not None and diags[0].pos.line > 1


def test_a_gate_of_another_shape_names_both_allowed_shapes():
    spec = spec_text("    rule: {kind: gd, lr: x}")
    with pytest.raises(SpecError) as err:
        nestdsl.check_text(spec, "channels.yaml")
    (d,) = err.value.diagnostics
    assert f"[{H}] (per head) or [{H}, {V}] (per channel)" in d.message and d.pos.line > 1
