"""The Omega window's position weights (ATLAS eq. 9's γ_i^(t) = weight_i * positions_t[t - i])
through the compiler: the compiled memory against the loop oracle, the differential
(positions = 1 is the plain window), a learned [heads, c] source, streaming across a window
boundary, and the positioned errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler import run_passes
from nestdsl.compiler.modules.ops import Stream
from nestdsl.errors import SpecError
from nestdsl.kernels.deep_memory import deep_memory_naive

H, K, T, B, C, WINDOW = 2, 8, 13, 2, 4, 3

SPEC = """
nestdsl: 1
name: omega
dims: {{vocab: 256, d: 16, h: {H}, k: {K}}}
levels:
  chunk: {{every: {C}}}
  pretrain: {{every: step, optimizer: {{kind: adamw}}}}
memories:
  M:
    structure: {structure}
    level: chunk
    keys: kk
    values: vv
    objective: l2
    rule: {rule}
    window: {{tokens: {W}, weight: gw{positions}}}
    init: {{kind: learned}}
embed: {{vocab: vocab, dim: d}}
blocks:
  - nodes:
      q:  {{op: linear, in: x, out: [h, k]}}
      kk: {{op: linear, in: x, out: [h, k], then: [l2norm]}}
      vv: {{op: linear, in: x, out: [h, k]}}
      lr: {{op: linear, in: x, out: [h], then: [sigmoid]}}
      gw: {{op: linear, in: x, out: [h], then: [sigmoid]}}
      lrc: {{op: linear, in: x, out: [h, k], then: [sigmoid]}}
      om: {{op: linear, in: x, out: {om_shape}, rank: 4, then: [sigmoid]}}
      o:  {{op: read, memory: M, query: q, order: write_then_read}}
      y:  {{op: linear, in: o, out: d}}
      x1: {{op: add, in: [x, y]}}
    out: x1
"""
MATRIX = "{kind: matrix, heads: h, key_dim: k, value_dim: k}"
MLP = "{kind: mlp, heads: h, dim: k, expansion: 2}"


def text(positions=", positions: om", structure=MATRIX, rule="{kind: gd, lr: lr}",
         om_shape=f"[h, {WINDOW}]"):  # fmt: skip
    return SPEC.format(H=H, K=K, C=C, W=WINDOW, structure=structure, rule=rule,
                       positions=positions, om_shape=om_shape)  # fmt: skip


def memory_of(**kw):
    checked = nestdsl.check_text(text(**kw), "omega.yaml")
    plan = run_passes(checked)
    model = nestdsl.compile(checked).double()
    return plan.layers[0].memories["M"], model.layers[0].memories["M"]


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    kk = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    return {"q": rand(B, T, H, K) - 0.5, "kk": kk, "vv": rand(B, T, H, K) - 0.5,
            "lr": rand(B, T, H), "gw": rand(B, T, H), "om": rand(B, T, H, WINDOW)}  # fmt: skip


def run(module, env, stream=None, T_=T):
    return module.run(env, [(env["q"], "write_then_read")], stream or Stream(0, {}), T_)[0]


@pytest.mark.parametrize("structure", ["matrix", "mlp"])
def test_compiled_memory_matches_the_loop_oracle(structure):
    plan, module = memory_of(structure=MATRIX if structure == "matrix" else MLP)
    assert plan.kernel == "deep_memory" and "positions=`om`" in plan.options.describe()
    assert "triton runs the torch chunk form" in plan.why
    env = inputs(1)
    W0 = module.initial_weights(B, env["q"])
    zeros = torch.zeros(B, T, H, dtype=torch.float64)
    expected, _ = deep_memory_naive(env["q"], env["kk"], env["vv"], env["lr"], zeros, zeros,
                                    W0, module.options, gamma=env["gw"], omega=env["om"])  # fmt: skip
    got = run(module, env)
    assert (got - expected).norm() / expected.norm() < 1e-10


def test_positions_of_one_are_the_plain_window_and_others_change_it():
    _, plain = memory_of(positions="")
    _, ones = memory_of(positions=", positions: 1.0")
    _, moving = memory_of()
    for m in (ones, moving):
        m.load_state_dict(plain.state_dict(), strict=False)
    env = inputs(2)
    base = run(plain, env)
    assert (run(ones, env) - base).abs().max() < 1e-12
    assert (run(moving, env) - base).abs().max() > 1e-4


def test_per_channel_gates_with_positions_match_per_head_when_channels_are_equal():
    _, per_head = memory_of()
    plan, per_chan = memory_of(rule="{kind: gd, lr: lrc}")
    assert plan.options.channel_gates == ("lr",)
    per_chan.load_state_dict(per_head.state_dict())
    env = inputs(4)
    env["lrc"] = env["lr"].unsqueeze(-1).expand(B, T, H, K)
    a, b = run(per_chan, env), run(per_head, env)
    assert (a - b).norm() / b.norm() < 1e-10
    env["lrc"] = env["lrc"] * torch.linspace(0.1, 1.0, K, dtype=torch.float64)
    assert (run(per_chan, env) - b).abs().max() > 1e-4


def test_learned_positions_are_a_parameter_per_head_and_position():
    plan, module = memory_of(positions=", positions: {kind: learned, init: 0.5}")
    param = module.gates.learned["positions"]
    assert tuple(param.shape) == (H, WINDOW)
    env = inputs(3)
    run(module, env).pow(2).sum().backward()
    assert param.grad is not None and param.grad.abs().sum() > 0


def test_streaming_across_a_window_boundary():
    """Pieces that end inside a chunk and inside a window equal one pass."""
    checked = nestdsl.check_text(text(), "omega.yaml")
    model = nestdsl.compile(checked).double().eval()
    tokens = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(0))
    whole, _ = model(tokens)
    state, parts = None, []
    for a, b in ((0, 5), (5, 6), (6, 13), (13, 23)):
        out, state = model(tokens[:, a:b], state)
        parts.append(out)
    got = torch.cat(parts, 1)
    assert (got - whole).norm() / whole.norm() < 1e-10


def test_positions_of_the_wrong_shape_are_a_positioned_error():
    bad = text(om_shape="[h]")
    with pytest.raises(SpecError) as err:
        nestdsl.check_text(bad, "omega.yaml")
    (d,) = err.value.diagnostics
    assert f"takes positions of shape [{H}, {WINDOW}]" in d.message
    line = bad.splitlines()[d.pos.line - 1]
    assert "window:" in line and line[d.pos.col - 1 :].startswith("om}")
