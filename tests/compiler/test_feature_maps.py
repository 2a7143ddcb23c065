"""Feature maps φ (ATLAS eqs. 19-21, DeepTransformers eqs. 22-26): the tensor-power maps'
inner products, φ inside residual MLP memories (`M(x) = x + N(MLP(φ(x)))`) against loop
oracles and autograd, streaming, and `atlas` with its paper's map. All in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler import run_passes
from nestdsl.compiler.modules.feature_map import FeatureMap, power_width
from nestdsl.compiler.modules.ops import Stream
from nestdsl.compiler.passes.lower_memories import mapped_dim
from nestdsl.kernels.deep_memory import DeepMemoryOptions, deep_memory_naive, memory_forward

H, D, T, B = 2, 4, 13, 2

SPEC = """
nestdsl: 1
name: one-memory
dims: {{vocab: 256, d: 16, h: {H}, k: {D}}}
levels:
  fast: {{every: {every}}}
  pretrain: {{every: step, optimizer: {{kind: adamw}}}}
memories:
  M:
    structure: {structure}
    level: fast
    keys: kk
    values: vv
    objective: {objective}
    rule: {rule}
    init: {{kind: learned}}
    feature_map: {fm}
{extra}
embed: {{vocab: vocab, dim: d}}
blocks:
  - nodes:
      q:  {{op: linear, in: x, out: [h, k]}}
      kk: {{op: linear, in: x, out: [h, k]}}
      vv: {{op: linear, in: x, out: [h, k]}}
      lr: {{op: linear, in: x, out: [h], then: [sigmoid]}}
      mo: {{op: linear, in: x, out: [h], then: [sigmoid]}}
      fg: {{op: linear, in: x, out: [h], then: [sigmoid]}}
      o:  {{op: read, memory: M, query: q}}
      y:  {{op: linear, in: o, out: d}}
      x1: {{op: add, in: [x, y]}}
    out: x1
"""
MLP = "{kind: mlp, heads: h, dim: k, depth: 2, expansion: 2, residual: true}"
POLY = "{kind: polynomial, degree: 2}"


def memory_of(structure=MLP, objective="l2", rule="{kind: gd, lr: lr}", fm=POLY, every=1,
              extra=""):  # fmt: skip
    text = SPEC.format(H=H, D=D, structure=structure, objective=objective, rule=rule, fm=fm,
                       every=every, extra=extra)  # fmt: skip
    checked = nestdsl.check_text(text, "one-memory.yaml")
    plan = run_passes(checked)
    torch.manual_seed(0)  # the learned initial weights (lp's cubic steps diverge from some)
    model = nestdsl.compile(checked).double()
    return plan.layers[0].memories["M"], model.layers[0].memories["M"]


def inputs(seed=0, width=D):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, width, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, width, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, width, generator=g, dtype=torch.float64)
    gates = {n: torch.rand(B, T, H, generator=g, dtype=torch.float64) for n in ("lr", "mo", "fg")}
    gates["lr"] = 0.3 * gates["lr"]
    gates["fg"] = 0.1 * gates["fg"]
    return {"q": q, "kk": k, "vv": v, **gates}


def run(module, env, stream=None):
    return module.run(env, [(env["q"], "write_then_read")], stream or Stream(0, {}), T)[0]


def close(a, b, tol=1e-10):
    err = (a - b).norm() / b.norm()
    assert err < tol, f"relative error {err:.2e}"


# ------------------------------------------------------------------ the tensor-power maps


@pytest.mark.parametrize("kind", ["polynomial", "exp"])
@pytest.mark.parametrize("degree", [1, 2, 3])
def test_power_map_inner_product_is_the_taylor_sum(kind, degree):
    """φ(q)·φ(k) = Σ_{i<=p} a_i (q·k)^i with a_i = c_i^2 (1/i! for `exp` and at the start)."""
    d = 5
    phi = FeatureMap(kind, degree, d, heads=3).double()
    a = torch.tensor([1 / math.factorial(i) for i in range(degree + 1)], dtype=torch.float64)
    a = a.expand(3, -1)  # [H, p + 1]
    if kind == "polynomial":  # learned gates g_i: any values, signs included; a_i = g_i^2 / i!
        with torch.no_grad():
            phi.gates.copy_(torch.randn(3, degree + 1, dtype=torch.float64))
        a = phi.gates.detach() ** 2 * a
    q, k = torch.randn(2, 7, 3, d, dtype=torch.float64).unbind(0)  # [T, H, d]
    got = (phi(q) * phi(k)).sum(-1)  # [T, H]
    dot = (q * k).sum(-1)
    expected = sum(a[:, i] * dot**i for i in range(degree + 1))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert phi(q).shape[-1] == power_width(d, degree) == mapped_dim(kind, degree, d)


def test_unique_monomials_halve_the_width():
    """d = 32, p = 2: 1 + 32 + 528 features instead of 1 + 32 + 32^2."""
    assert mapped_dim("polynomial", 2, 32) == 561
    assert sum(32**i for i in range(3)) == 1057
    assert FeatureMap("exp", 2, 32, heads=1)(torch.randn(3, 1, 32)).shape == (3, 1, 561)


def test_polynomial_starts_as_the_truncated_exponential_map():
    """a_i = 1/i! at the start (ATLAS), exactly: φ_p = φ* until the outer level trains g."""
    poly, exp = FeatureMap("polynomial", 3, 4, heads=2), FeatureMap("exp", 3, 4, heads=2)
    assert poly.gates.shape == (2, 4) and bool((poly.gates == 1).all())
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    assert torch.equal(poly.double()(x), exp.double()(x))


@pytest.mark.parametrize("degree", [1, 3, 6])
def test_exp_map_with_a_linear_memory_is_unnormalized_softmax_attention(degree):
    """Matrix memory, `dot`, `gd` with lr 1, no retention, φ*: o_t = Σ_{s<=t} φ*(q_t)·φ*(k_s) v_s
    -> Σ_{s<=t} exp(q_t·k_s) v_s as p grows (DeepTransformers; |q·k| <= 0.25 here)."""
    structure = "{kind: matrix, heads: h, key_dim: k, value_dim: k}"
    plan, module = memory_of(structure, "dot", "{kind: gd, lr: 1.0}",
                             f"{{kind: exp, degree: {degree}}}")  # fmt: skip
    assert plan.kernel == "linear_attention"
    env = inputs(1)
    env["q"], env["kk"] = 0.5 * env["q"], 0.5 * env["kk"]
    scores = torch.einsum("bthk,bshk->bhts", env["q"], env["kk"])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    softmax_attention = torch.einsum("bhts,bshv->bthv", scores.exp() * causal, env["vv"])
    taylor = sum(scores**i / math.factorial(i) for i in range(degree + 1)) * causal
    out = run(module, env)
    close(out, torch.einsum("bhts,bshv->bthv", taylor, env["vv"]))  # exact at every degree
    # the truncation error of exp at |x| <= 1/4 is below (1/4)^(p+1) / (p+1)! * e^(1/4)
    bound = 0.25 ** (degree + 1) / math.factorial(degree + 1) * math.exp(0.25)
    err = (out - softmax_attention).norm() / softmax_attention.norm()
    assert err < 4 * bound, f"degree {degree}: relative error {err:.2e}"


# ------------------------------------------------------------------ φ inside MLP memories


def naive_with_map(plan, module, env, *, skip=True, objective="l2"):
    """`deep_memory_naive` on the explicitly featurized keys and queries: the non-residual
    memory on φ(k) fitted to v - k (`dot`: v), the raw query added to the read."""
    phi = module.phi
    q, k, v = env["q"], env["kk"], env["vv"]
    target = v - k if skip and objective != "dot" else v
    W = [w.unsqueeze(0).expand(B, *w.shape) for w in module.initial]
    theta, eta, alpha, delta, gamma = module._gates(env, k)  # the gates as the spec routes them
    kw = {"gamma": gamma} if module.window > 1 else {"delta": delta}
    o, _ = deep_memory_naive(phi(q), phi(k), target, theta, eta, alpha, W, module.options, **kw)
    return o + q if skip else o


CASES = {
    "mlp-l2-gd-token": dict(),
    "mlp-dot": dict(objective="dot"),
    "mlp-huber-chunk": dict(objective="{kind: huber, delta: 0.5}", every=4),
    "mlp-momentum-kl": dict(rule="{kind: momentum, lr: lr, momentum: mo}", every=4,
                            extra="    retention: {kind: kl, forget: fg}"),
    "mlp-lq": dict(every=4, extra="    retention: {kind: lq, forget: fg}"),
    "mlp-dgd": dict(rule="{kind: dgd, lr: lr}"),
    "mlp-huber-norm": dict(objective="{kind: huber, delta: 0.5, switch: norm}", every=4),
    "mlp-muon-window": dict(rule="{kind: muon, lr: lr, momentum: mo}", every=4,
                            extra="    window: {tokens: 3}\n    retention: {kind: l2, forget: fg}"),
    "mlp-exp-layernorm": dict(fm="{kind: exp, degree: 2}", structure=MLP[:-1] + ", norm: layernorm}"),
    "mlp-elu1": dict(fm="elu1"),
    "gated-residual": dict(structure="{kind: gated_mlp, heads: h, dim: k, expansion: 2}", every=4),
    "mlp-not-residual": dict(structure=MLP.replace("true", "false")),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_mlp_memory_with_map_equals_the_loop_oracle(case):
    plan, module = memory_of(**case)
    residual = "residual: false" not in case.get("structure", MLP)
    assert plan.options.skip == residual
    assert module.structure.hidden == 2 * D  # expansion x the key width before the map
    env = inputs(2)
    objective = case.get("objective", "l2")
    expected = naive_with_map(plan, module, env, skip=residual, objective=objective)
    close(run(module, env), expected)


@pytest.mark.parametrize("objective", ["l2", "dot", "{kind: lp, p: 3}"])
def test_updates_are_the_gradient_of_the_residual_objective(objective):
    """Every token, gd: W <- W - lr ∇_W l(x + W_2 gelu(W_1 φ(x)); v) by torch.autograd on the
    residual memory itself (no `v - k` rewriting), read o_t = M_t(q_t)."""
    plan, module = memory_of(objective=objective)
    env = inputs(3)
    phi = module.phi
    W = [w.detach().unsqueeze(0).expand(B, *w.shape).clone() for w in module.initial]

    def M(W, x):  # x [B, H, d] -> [B, H, d]; W[0] [B, H, hidden, width(φ)], W[1] [B, H, d, hidden]
        h = torch.einsum("bhof,bhf->bho", W[0], phi(x))
        return x + torch.einsum("bhdo,bho->bhd", W[1], F.gelu(h))

    def loss(y, v):
        if objective == "l2":
            return 0.5 * (y - v).pow(2).sum()
        if objective == "dot":
            return -(y * v).sum()
        return (y - v).abs().pow(3).sum()

    outs = []
    for t in range(T):
        W = [w.requires_grad_() for w in W]
        grads = torch.autograd.grad(loss(M(W, env["kk"][:, t]), env["vv"][:, t]), W)
        lr = env["lr"][:, t, :, None, None]
        W = [(w - lr * g).detach() for w, g in zip(W, grads)]
        outs.append(M(W, env["q"][:, t]))
    with torch.no_grad():
        close(run(module, env), torch.stack(outs, 1))


def test_static_mlp_memory_reads_x_plus_mlp_of_phi():
    """An MLP memory on the outer level (weights trained by the optimizer, objective `task`)."""
    text = SPEC.format(H=H, D=D, structure=MLP, objective="task", rule="null", fm=POLY, every=1,
                       extra="").replace("level: fast", "level: pretrain")  # fmt: skip
    text = text.replace("    keys: kk\n    values: vv\n", "")
    checked = nestdsl.check_text(text, "s.yaml")
    module = nestdsl.compile(checked).double().layers[0].memories["M"]
    env = inputs(4)
    W1, W2 = module.initial  # [H, hidden, width(φ)], [H, d, hidden]
    h = F.gelu(torch.einsum("hof,bthf->btho", W1, module.phi(env["q"])))
    expected = env["q"] + torch.einsum("hdo,btho->bthd", W2, h)
    with torch.no_grad():
        close(run(module, env), expected)


@pytest.mark.parametrize("split", [5, 8])
def test_streaming_equals_one_pass(split):
    plan, module = memory_of(rule="{kind: muon, lr: lr, momentum: mo}", every=4,
                             extra="    window: {tokens: 3}")  # fmt: skip
    env = inputs(5)
    with torch.no_grad():
        whole = run(module, env)
        stream = Stream(0, {})
        first = module.run({n: t[:, :split] for n, t in env.items()},
                           [(env["q"][:, :split], "write_then_read")], stream, split)[0]  # fmt: skip
        state = {**stream.state, **{k: v for k, v in stream.new_state.items() if v is not None}}
        rest = module.run({n: t[:, split:] for n, t in env.items()},
                          [(env["q"][:, split:], "write_then_read")], Stream(split, state),
                          T - split)[0]  # fmt: skip
    close(torch.cat([first, rest], 1), whole, 1e-12)


def test_triton_verdict_names_the_map():
    """A memory the fused kernel held (residual 2-layer MLP, l2, gd) falls back once mapped."""
    plan, _ = memory_of(every=4)
    assert "the feature map" in plan.why
    plain, _ = memory_of(every=4, fm="identity")
    assert "triton: fused" in plain.why
    from nestdsl.kernels.deep_memory import triton as fused

    options = DeepMemoryOptions(structure=plan_structure(plan), chunk_size=4)
    assert fused.unsupported(options, torch.float32) == "a memory without the residual path"


def plan_structure(plan):
    from nestdsl.compiler.modules.memory_deep import structure_of

    return structure_of(plan, plan.options.key_dim)


def test_memory_forward_with_explicit_hidden_width():
    from nestdsl.kernels.deep_memory import MemoryStructure

    st = MemoryStructure(15, 4, depth=2, expansion=2, residual=False, hidden_dim=8)
    assert st.shapes() == [(8, 15), (4, 8)]
    W = [torch.randn(1, o, i) for o, i in st.shapes()]
    y, _ = memory_forward(st, W, torch.randn(1, 3, 15))
    assert y.shape == (1, 3, 4)


# ------------------------------------------------------------------ atlas ships with its map

ATLAS_SMALL = ["dims.d_model=32", "dims.n_heads=4", "dims.d_head=8", "dims.n_layers=1",
               "dims.d_ff=64", "memories.M.rule.ns_steps=2"]  # fmt: skip


def test_atlas_with_its_map_differs_and_trains_the_gates():
    """Differential: atlas with and without φ_p (ATLAS's ablation "w/o polynomial map"), same
    weights; the loss reaches every head's gates g_0, g_1, g_2."""
    mapped = nestdsl.load("atlas", ATLAS_SMALL)
    assert mapped.plan.layers[0].memories["M"].options.feature_map == "polynomial"
    plain = nestdsl.load("atlas", [*ATLAS_SMALL, "memories.M.feature_map=null"])
    torch.manual_seed(0)
    with_map = nestdsl.compile(mapped).double()
    without = nestdsl.compile(plain).double()
    shared = {n: p for n, p in with_map.state_dict().items() if n in without.state_dict()}
    assert set(with_map.state_dict()) - set(shared) == {"layers.0.memories.M.phi.gates"}
    without.load_state_dict({n: p for n, p in shared.items()
                             if p.shape == without.state_dict()[n].shape}, strict=False)  # fmt: skip
    tokens = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    logits, _ = with_map(tokens)
    with torch.no_grad():
        assert not torch.allclose(logits, without(tokens)[0])
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    gates = with_map.layers[0].memories["M"].phi.gates
    assert gates.shape == (4, 3) and bool((gates.grad.abs() > 0).all())
    assert with_map.parameter_levels()["layers.0.memories.M.phi.gates"] == "pretrain"


def test_atlas_streams_with_its_map():
    model = nestdsl.compile(nestdsl.load("atlas", ATLAS_SMALL)).double()
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model(tokens)
        a, state = model(tokens[:, :21])
        b, _ = model(tokens[:, 21:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-10, atol=1e-10)
