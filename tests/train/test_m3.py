"""M3 (Nested Learning Algorithm 1): hand-computed steps, Newton-Schulz, and it optimizes."""

from __future__ import annotations

import pytest
import torch

from nestdsl.errors import UserError
from nestdsl.optim import M3, build_optimizer, newton_schulz


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def quintic_by_hand(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    x = matrix / (matrix.norm() + 1e-7)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    for _ in range(steps):
        a_mat = x @ x.T
        x = 3.4445 * x + (-4.7750 * a_mat + 2.0315 * a_mat @ a_mat) @ x
    return x.T if transposed else x


def test_one_step_on_a_matrix_equals_the_formula():
    theta0 = torch.randn(3, 4)
    grad = torch.randn(3, 4)
    param = torch.nn.Parameter(theta0.clone())
    lr, b1, b2, b3, alpha, eps = 0.01, 0.9, 0.99, 0.5, 0.7, 1e-8
    opt = M3([param], lr=lr, betas=(b1, b2, b3), alpha=alpha, frequency=2, ns_steps=5, eps=eps)
    param.grad = grad.clone()
    opt.step()
    # First update: M1 = b1 g, V = b2 g^2, M2 = 0 so O2 = 0.
    expected = theta0 - lr * quintic_by_hand(b1 * grad, 5) / torch.sqrt(b2 * grad**2 + eps)
    torch.testing.assert_close(param.data, expected, rtol=1e-5, atol=1e-6)


def test_slow_momentum_absorbs_the_previous_block_every_f_steps():
    theta = torch.randn(2, 3)
    grads = [torch.randn(2, 3) for _ in range(3)]
    param = torch.nn.Parameter(theta.clone())
    lr, b1, b2, b3, alpha, eps = 0.01, 0.9, 0.99, 0.5, 0.7, 1e-8
    opt = M3([param], lr=lr, betas=(b1, b2, b3), alpha=alpha, frequency=2, ns_steps=3, eps=eps)
    m1, v, m2 = torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)
    o2 = torch.zeros(2, 3)
    for t, grad in enumerate(grads):
        if t == 2:  # first update of block 1: M2 += b3 * (g0 + g1)
            m2 = m2 + b3 * (grads[0] + grads[1])
            o2 = quintic_by_hand(m2, 3)
        m1 = m1 + b1 * grad
        v = v + b2 * grad**2
        theta = theta - lr * (quintic_by_hand(m1, 3) + alpha * o2) / torch.sqrt(v + eps)
        param.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(param.data, theta, rtol=1e-5, atol=1e-6)


def test_vector_parameters_skip_newton_schulz():
    param = torch.nn.Parameter(torch.zeros(5))
    grad = torch.tensor([1.0, -2.0, 0.5, 3.0, -0.1])
    opt = M3([param], lr=0.1, betas=(0.9, 0.99, 0.9), eps=0.0)
    param.grad = grad.clone()
    opt.step()
    # O1 = M1 = 0.9 g, V = 0.99 g^2: the step is -lr * 0.9 / sqrt(0.99) * sign(g).
    torch.testing.assert_close(param.data, -0.1 * 0.9 / 0.99**0.5 * grad.sign())


@pytest.mark.parametrize("kind", ["quintic", "cubic"])
def test_newton_schulz_orthogonalizes(kind):
    matrix = torch.randn(6, 4)
    steps = 5 if kind == "quintic" else 30
    result = newton_schulz(matrix, steps, kind)
    singular = torch.linalg.svdvals(result)
    if kind == "cubic":  # converges to the polar factor
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        torch.testing.assert_close(result, u @ vh, atol=1e-4, rtol=1e-4)
    else:  # Muon's quintic pushes singular values into roughly [0.7, 1.2]
        assert singular.min() > 0.5 and singular.max() < 1.3
    assert result.shape == matrix.shape


def minimize_quadratic(shape, steps: int, **settings) -> list[float]:
    """Losses of M3 on ||theta - target||^2 from theta = 0, one per update."""
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(*shape, generator=generator)
    param = torch.nn.Parameter(torch.zeros(*shape))
    opt = M3([param], **settings)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((param - target) ** 2).sum()
        losses.append(loss.item())
        loss.backward()
        opt.step()
    losses.append(((param - target) ** 2).sum().item())
    return losses


@pytest.mark.parametrize("shape", [(4, 4), (8,)])
def test_m3_as_printed_decreases_a_quadratic(shape):
    losses = minimize_quadratic(shape, 10, lr=0.05, frequency=5)
    assert losses[-1] < 0.9 * losses[0]
    assert all(b < a for a, b in zip(losses[:6], losses[1:6], strict=False))


@pytest.mark.parametrize(("shape", "lr", "factor"), [((4, 4), 0.1, 0.6), ((8,), 0.01, 0.05)])
def test_m3_with_decays_converges_on_a_quadratic(shape, lr, factor):
    losses = minimize_quadratic(
        shape, 200, lr=lr, frequency=5, momentum_decay=0.9, variance_decay=0.999
    )
    assert losses[-1] < factor * losses[0]


def test_factory_builds_both_kinds_and_groups_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    adamw = build_optimizer(
        model.named_parameters(), {"kind": "adamw", "lr": 1e-3, "weight_decay": 0.1}
    )
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in adamw.param_groups] == [1, 3]  # the matrix; biases and norm
    m3 = build_optimizer(
        model.parameters(), {"kind": "m3", "lr": 1e-3, "beta3": 0.5, "frequency": 4}
    )
    assert isinstance(m3, M3) and m3.defaults["betas"] == (0.9, 0.999, 0.5)
    with pytest.raises(UserError, match="unknown optimizer kind 'sgd'"):
        build_optimizer(model.parameters(), {"kind": "sgd"})
    with pytest.raises(UserError, match="takes 3 betas"):
        build_optimizer(model.parameters(), {"kind": "m3", "betas": [0.9, 0.9]})
    with pytest.raises(UserError, match="bad m3 optimizer settings"):
        build_optimizer(model.parameters(), {"kind": "m3", "frequency": 0})


def test_the_schema_and_the_optimizer_agree_on_every_m3_setting():
    """Every spec setting reaches M3 (the damping factors included) with the same defaults."""
    from nestdsl.optim import M3_DEFAULTS
    from nestdsl.spec.schema import M3 as M3Spec

    spec = M3Spec(kind="m3").model_dump(mode="json")
    assert set(spec) - {"kind"} == set(M3_DEFAULTS)
    for key, value in M3_DEFAULTS.items():
        assert spec[key] == (list(value) if isinstance(value, tuple) else value), key
    damped = M3Spec(kind="m3", momentum_decay=0.9, variance_decay=0.99).model_dump(mode="json")
    model = torch.nn.Linear(3, 4)
    opt = build_optimizer(model.parameters(), damped)
    assert opt.defaults["momentum_decay"] == 0.9 and opt.defaults["variance_decay"] == 0.99
