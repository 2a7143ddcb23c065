"""Delta Momentum (Nested Learning eqs. 48-49): the formula, its limits, and it trains."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config
from toymodel import toy_source

import nestdsl
from nestdsl.errors import SpecError, UserError
from nestdsl.optim import DeltaMomentum, build_optimizer, optimizer_settings
from nestdsl.spec.schema import DeltaMomentum as DeltaMomentumSpec
from nestdsl.spec.shipped import read_spec
from nestdsl.train import spec_source, train
from nestdsl.train.metrics import read_metrics


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def delta_momentum_by_hand(theta, grads, lr, alpha, forget, weight_decay, eps=1e-8):
    """Parameters and momenta after each update, in float64 on flattened vectors."""
    theta = theta.double().flatten()
    momentum = torch.zeros_like(theta)
    history = []
    for grad in grads:
        g = grad.double().flatten()
        key = g / torch.sqrt(torch.dot(g, g) + eps**2)
        momentum = alpha * momentum - forget * torch.dot(momentum, key) * key + g
        theta = theta * (1 - lr * weight_decay) - lr * momentum
        history.append((theta.clone(), momentum.clone()))
    return history


@pytest.mark.parametrize("shape", [(3, 5), (7,)], ids=["matrix", "vector"])
@pytest.mark.parametrize(("alpha", "forget"), [(0.9, 1.0), (0.7, 0.4)])
def test_steps_equal_the_formula(shape, alpha, forget):
    theta0 = torch.randn(shape)
    # Gradient norms from about 0.1 to 30: the unit key keeps the momentum bounded either way.
    grads = [torch.randn(shape) * scale for scale in (1.0, 10.0, 0.05, 3.0, 1.0, 8.0)]
    lr, weight_decay = 0.05, 0.2
    param = torch.nn.Parameter(theta0.clone())
    opt = DeltaMomentum([param], lr=lr, momentum=alpha, forget=forget, weight_decay=weight_decay)
    expected = delta_momentum_by_hand(theta0, grads, lr, alpha, forget, weight_decay)
    for grad, (theta, momentum) in zip(grads, expected, strict=True):
        param.grad = grad.clone()
        opt.step()
        buffer = opt.state[param]["momentum_buffer"]
        torch.testing.assert_close(buffer.double().flatten(), momentum, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(param.data.double().flatten(), theta, rtol=1e-5, atol=1e-5)
    # The erase term mattered, far beyond the tolerance: heavy ball ends somewhere else.
    heavy_ball = delta_momentum_by_hand(theta0, grads, lr, alpha, 0.0, weight_decay)[-1][1]
    assert (heavy_ball - expected[-1][1]).abs().max() > 0.1


@pytest.mark.parametrize("shape", [(4, 6), (9,)], ids=["matrix", "vector"])
def test_forget_zero_is_heavy_ball_sgd(shape):
    theta0 = torch.randn(shape)
    ours, theirs = torch.nn.Parameter(theta0.clone()), torch.nn.Parameter(theta0.clone())
    delta = DeltaMomentum([ours], lr=0.1, momentum=0.8, forget=0.0)
    sgd = torch.optim.SGD([theirs], lr=0.1, momentum=0.8, dampening=0.0, nesterov=False)
    for _ in range(10):
        grad = torch.randn(shape)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        delta.step()
        sgd.step()
        assert torch.equal(ours.data, theirs.data)
    assert torch.equal(delta.state[ours]["momentum_buffer"], sgd.state[theirs]["momentum_buffer"])


@pytest.mark.parametrize(("alpha", "forget"), [(0.9, 1.0), (0.5, 1.0), (0.5, 0.5), (0.5, 0.0)])
def test_constant_gradient_settles_at_g_over_one_minus_alpha_plus_forget(alpha, forget):
    grad = torch.tensor([[3.0, 0.0], [0.0, -4.0]], dtype=torch.float64)  # |g| = 5
    param = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = DeltaMomentum([param], lr=1e-3, momentum=alpha, forget=forget)
    for _ in range(80):
        param.grad = grad.clone()
        opt.step()
    buffer = opt.state[param]["momentum_buffer"]
    steady = 5.0 / (1 - alpha + forget)  # 5 / 1.1 = 4.545... for the paper's rule at 0.9
    torch.testing.assert_close(buffer.norm().item(), steady, rtol=1e-9, atol=0.0)
    torch.testing.assert_close(buffer, grad * steady / 5.0, rtol=1e-9, atol=1e-12)
    if (alpha, forget) == (0.9, 1.0):
        assert buffer.norm().item() == pytest.approx(4.545454545, rel=1e-8)


def test_orthogonal_gradient_decays_the_old_component_by_alpha_only():
    basis, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    first, second = basis[:, 0].reshape(2, 3), basis[:, 1].reshape(2, 3)  # orthonormal
    param = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    opt = DeltaMomentum([param], lr=0.1, momentum=0.9, forget=1.0)
    param.grad = 3.0 * first
    opt.step()
    param.grad = 7.0 * second
    opt.step()
    buffer = opt.state[param]["momentum_buffer"]
    assert (buffer * first).sum().item() == pytest.approx(0.9 * 3.0, rel=1e-12)
    assert (buffer * second).sum().item() == pytest.approx(7.0, rel=1e-12)
    # The same gradient again is erased first: 0.9 * 7 - 7 + 7 along `second`.
    param.grad = 7.0 * second
    opt.step()
    assert (buffer * second).sum().item() == pytest.approx(0.9 * 7.0, rel=1e-12)
    assert (buffer * first).sum().item() == pytest.approx(0.81 * 3.0, rel=1e-12)


def test_zero_gradient_gives_no_nan():
    param = torch.nn.Parameter(torch.ones(3, 4))
    opt = DeltaMomentum([param], lr=0.1, momentum=0.9, weight_decay=0.1)
    param.grad = torch.zeros(3, 4)
    opt.step()  # first update: the momentum stays zero, only the weight decay acts
    assert torch.equal(opt.state[param]["momentum_buffer"], torch.zeros(3, 4))
    torch.testing.assert_close(param.data, torch.full((3, 4), 0.99))
    param.grad = torch.randn(3, 4)
    opt.step()
    before = opt.state[param]["momentum_buffer"].clone()
    param.grad = torch.zeros(3, 4)
    opt.step()
    buffer = opt.state[param]["momentum_buffer"]
    assert torch.isfinite(buffer).all() and torch.isfinite(param.data).all()
    torch.testing.assert_close(buffer, 0.9 * before)


def test_training_the_toy_model_lowers_the_loss(tmp_path, corpus):
    optimizer = {"kind": "delta_momentum", "lr": 0.3, "momentum": 0.9, "weight_decay": 0.01}
    result = train(
        toy_source(optimizer=optimizer), tiny_config(), tmp_path / "run", corpus=corpus,
        progress=False,
    )  # fmt: skip
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["kind"] == "val" and records[0]["step"] == 0
    assert result.val_loss < records[0]["loss"] - 0.5  # 6.49 -> 4.6 when written
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["optimizer"]
    assert saved == {
        "kind": "delta_momentum",
        "lr": 0.3,
        "momentum": 0.9,
        "forget": 1.0,
        "weight_decay": 0.01,
        "eps": 1e-8,
    }


def test_a_spec_with_delta_momentum_builds_it(tmp_path):
    text = read_spec("transformer")[0].decode()
    old = "optimizer: {kind: adamw, lr: 2.0e-3, weight_decay: 0.1}"
    assert old in text
    new = "optimizer: {kind: delta_momentum, lr: 0.05, forget: 0.5, weight_decay: 0.1}"
    spec = tmp_path / "t.yaml"
    spec.write_text(text.replace(old, new))
    (config,) = spec_source(str(spec)).trained_levels().values()  # what train builds
    assert config == {
        "kind": "delta_momentum",
        "lr": 0.05,
        "momentum": 0.9,
        "forget": 0.5,
        "weight_decay": 0.1,
    }
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model.named_parameters(), config)
    assert isinstance(opt, DeltaMomentum)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # matrices only
    assert {g["forget"] for g in opt.param_groups} == {0.5}
    with pytest.raises(SpecError):
        nestdsl.check_text(text.replace(old, "optimizer: {kind: delta_momentum, forget: 2}"))


def test_defaults_agree_with_the_spec_schema():
    from_schema = DeltaMomentumSpec(kind="delta_momentum").model_dump(mode="json")
    settings = optimizer_settings({"kind": "delta_momentum"})
    assert {k: settings[k] for k in from_schema} == from_schema
    assert set(settings) - set(from_schema) == {"eps"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"momentum": 1.5}, "bad delta_momentum optimizer settings: momentum must be in"),
        ({"forget": -0.1}, "bad delta_momentum optimizer settings: forget must be in"),
        ({"lr": 0.0}, "bad delta_momentum optimizer settings: lr must be positive"),
        ({"betas": [0.9, 0.9]}, "optimizer 'delta_momentum' has no setting 'betas'; known: eps"),
    ],
)
def test_bad_settings_are_user_errors(config, message):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match=message):
        build_optimizer(model.parameters(), {"kind": "delta_momentum", **config})
