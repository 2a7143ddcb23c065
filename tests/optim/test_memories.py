"""Declared optimizers against loop oracles written here, in float64 (issue 12).

The shorthands ARE the declarations (nestdsl/optim/m3.py and delta_momentum.py only check
their settings), so delta momentum and M3 are checked against independent loops of NL's
equations; DMGD (eq. 50) against a loop over gradient rows with the MLP's gradients written
out by hand; the matrix preconditioner and the l2 objective against their formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

import nestdsl
from nestdsl.optim import M3, DeltaMomentum

SHAPES = [(3, 5), (7,)]


def grads_for(shape, n: int = 7, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scales = [1.0, 6.0, 0.1, 2.0, 1.0, 3.0, 0.5, 1.0, 2.0]
    return [torch.randn(shape, generator=generator, dtype=torch.float64) * scales[i % 9]
            for i in range(n)]  # fmt: skip


def run(opt, param, grads) -> list[torch.Tensor]:
    out = []
    for grad in grads:
        param.grad = grad.clone()
        opt.step()
        out.append(param.detach().clone())
    return out


def start(shape) -> torch.nn.Parameter:
    generator = torch.Generator().manual_seed(0)
    return torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))


# ---------------------------------------------------------------- delta momentum (eqs. 48-49)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("forget", [1.0, 0.3])
def test_delta_momentum_is_the_delta_rule_on_the_momentum(shape, forget):
    param = start(shape)
    theta, m = param.detach().clone().flatten(), torch.zeros(param.numel(), dtype=torch.float64)
    lr, alpha, wd = 0.05, 0.8, 0.1
    grads = grads_for(shape)
    got = run(DeltaMomentum([param], lr=lr, momentum=alpha, forget=forget, weight_decay=wd), param, grads)
    for grad, after in zip(grads, got, strict=True):
        g = grad.flatten()
        key = g / math.sqrt(float(g @ g) + 1e-16)
        m = alpha * m - forget * float(m @ key) * key + g  # m (α I - forget k k^T) + g
        theta = theta * (1 - lr * wd) - lr * m
        torch.testing.assert_close(after.flatten(), theta, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- M3 (Algorithm 1)


def quintic(x: torch.Tensor, steps: int) -> torch.Tensor:
    x = x.float()
    x = x / math.sqrt(float((x * x).sum()) + 1e-14)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    return (x.T if tall else x).double()


@pytest.mark.parametrize("shape", SHAPES)
def test_m3_is_algorithm_one_with_decays(shape):
    param = start(shape)
    lr, (b1, b2, b3), alpha, f, eps, md, vd = 0.01, (0.8, 0.99, 0.5), 0.7, 3, 1e-8, 0.9, 0.95
    grads = grads_for(shape, n=8)
    opt = M3([param], lr=lr, betas=(b1, b2, b3), alpha=alpha, frequency=f, ns_steps=4,
             eps=eps, momentum_decay=md, variance_decay=vd, weight_decay=0.05)  # fmt: skip
    got = run(opt, param, grads)
    ns = (lambda x: quintic(x, 4)) if len(shape) == 2 else (lambda x: x)
    theta = start(shape).detach()
    m1, m2, v, block = (torch.zeros(shape, dtype=torch.float64) for _ in range(4))
    o2 = torch.zeros(shape, dtype=torch.float64)
    for t, (grad, after) in enumerate(zip(grads, got, strict=True)):
        if t > 0 and t % f == 0:  # the first update of a block folds in the previous block
            m2 = md * m2 + b3 * block
            block = torch.zeros_like(block)
            o2 = ns(m2)
        block = block + grad
        m1 = md * m1 + b1 * grad
        v = vd * v + b2 * grad * grad
        theta = theta * (1 - lr * 0.05) - lr * (ns(m1) + alpha * o2) / torch.sqrt(v + eps)
        # Newton-Schulz runs in float32 (as M3 always did): float32 agreement on matrices.
        tol = 1e-5 if len(shape) == 2 else 1e-12
        torch.testing.assert_close(after, theta, rtol=tol, atol=tol)
    assert float(o2.abs().max()) > 0  # the slow momentum took part


# ---------------------------------------------------------------- DMGD (eq. 50)


def test_dmgd_is_an_mlp_momentum_of_the_gradient_rows():
    shape, hidden, lr, alpha, inner = (4, 6), 16, 0.01, 0.9, 0.1
    param = start(shape)
    grads = grads_for(shape, n=6)
    got = run(nestdsl.optimizer("dmgd", [param], lr=lr, momentum=alpha, inner_lr=inner), param, grads)
    d = shape[1]
    w1 = torch.randn(hidden, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w1 = w1 / math.sqrt(d)
    w2 = torch.zeros(d, hidden, dtype=torch.float64)
    theta = start(shape).detach()
    for grad, after in zip(grads, got, strict=True):
        # L = -Σ_r <W2 tanh(W1 g_r), g_r>, its gradients row by row, at the state before decay.
        g_w1, g_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        for row in grad:  # keys are unit rows, values the raw rows
            h = torch.tanh(w1 @ unit(row))  # [hidden]
            g_w2 -= torch.outer(row, h)
            g_w1 -= torch.outer((w2.T @ row) * (1 - h * h), unit(row))
        w1, w2 = alpha * w1 - inner * g_w1, alpha * w2 - inner * g_w2
        update = torch.stack([w2 @ torch.tanh(w1 @ unit(row)) for row in grad])
        theta = theta - lr * update
        torch.testing.assert_close(after, theta, rtol=1e-10, atol=1e-12)
    assert float(w2.abs().max()) > 0


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / math.sqrt(float(vector @ vector) + 1e-16)


def test_dmgd_reads_scale_like_the_gradients():
    """Unit keys: gradients 1000 times smaller give reads 1000 times smaller (not 10^9)."""
    reads = []
    for scale in (1.0, 1e-3):
        param = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
        opt = nestdsl.optimizer("dmgd", [param], lr=1.0)
        param.grad = grads_for((3, 4), n=1)[0] * scale
        opt.step()
        reads.append(param.detach().abs().max())
    torch.testing.assert_close(reads[1], reads[0] * 1e-3, rtol=1e-9, atol=0.0)


# ---------------------------------------------------------------- matrix and l2 memories


def declared(memory: str, **update) -> dict:
    """A `kind: memories` config with one memory `P` read by the update."""
    return {"kind": "memories", "lr": 0.02, "weight_decay": 0.0,
            "settings": {"decay": 0.7, "step": 0.3},
            "memories": {"P": {**_yaml(memory), "rule": {"kind": "gd", "lr": "step"},
                               "retention": "decay"}},
            "update": {"direction": ["P"], **update}}  # fmt: skip


def _yaml(text: str) -> dict:
    from nestdsl.spec.loader import load_yaml

    return load_yaml(text).data


@pytest.mark.parametrize("keys", ["grad", "unit_grad"])
@pytest.mark.parametrize("objective", ["dot", "l2"])
def test_a_matrix_preconditioner_learns_from_the_gradient_rows(objective, keys):
    from nestdsl.optim import build_optimizer

    param = start((5, 3))
    config = declared(f"{{structure: matrix, objective: {objective}, keys: {keys}}}")
    key = unit if keys == "unit_grad" else (lambda row: row)
    grads = grads_for((5, 3), n=5)
    got = run(build_optimizer([param], config), param, grads)
    p, theta = torch.zeros(3, 3, dtype=torch.float64), start((5, 3)).detach()
    for grad, after in zip(grads, got, strict=True):
        gradient = torch.zeros(3, 3, dtype=torch.float64)
        for row in grad:  # the memory maps key row -> value row (the gradient's row)
            error = -row if objective == "dot" else p @ key(row) - row
            gradient += torch.outer(error, key(row))
        p = 0.7 * p - 0.3 * gradient
        theta = theta - 0.02 * torch.stack([p @ key(row) for row in grad])
        torch.testing.assert_close(after, theta, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("keys", ["one", "grad", "unit_grad"])
def test_an_elementwise_l2_memory_regresses_onto_the_gradient(keys):
    from nestdsl.optim import build_optimizer

    param = start((6,))
    config = declared(f"{{structure: elementwise, objective: l2, keys: {keys}}}")
    grads = grads_for((6,), n=5)
    got = run(build_optimizer([param], config), param, grads)
    m, theta = torch.zeros(6, dtype=torch.float64), start((6,)).detach()
    for grad, after in zip(grads, got, strict=True):
        k = {"one": torch.ones(6, dtype=torch.float64), "grad": grad, "unit_grad": unit(grad)}[keys]
        m = 0.7 * m - 0.3 * (m * k - grad) * k
        theta = theta - 0.02 * m
        torch.testing.assert_close(after, theta, rtol=1e-12, atol=1e-12)
