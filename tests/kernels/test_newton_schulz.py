"""Newton-Schulz orthogonalization (Muon, M3, the in-context Muon rule): against the polar
factor from an SVD, batched against one matrix at a time, safe and differentiable at zero."""

from __future__ import annotations

import pytest
import torch

from nestdsl.kernels.newton_schulz import newton_schulz


def polar(x: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(x, full_matrices=False)
    return U @ Vh


def well_conditioned(m: int, n: int, seed: int) -> torch.Tensor:
    """A random m x n float64 matrix with singular values in [0.5, 1]."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    r = min(m, n)
    sigma = 0.5 + 0.5 * torch.rand(r, generator=gen, dtype=torch.float64)
    return U[:, :r] @ torch.diag(sigma) @ V[:, :r].T


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4)])
def test_cubic_converges_to_the_polar_factor(shape):
    x = well_conditioned(*shape, seed=sum(shape))
    # Frobenius normalization puts the singular values in [0.5 / ||x||, 1 / sqrt(r)]: the
    # cubic map needs a few dozen steps to lift the smallest to 1.
    got = newton_schulz(x, steps=40, kind="cubic")
    torch.testing.assert_close(got, polar(x), rtol=0, atol=1e-10)


def test_quintic_lands_singular_values_near_one():
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.linalg.svdvals(newton_schulz(x, steps=5, kind="quintic"))
    assert 0.5 < sigma.min() and sigma.max() < 1.3, sigma
    # Same singular vectors as the polar factor: the iteration is an odd matrix polynomial.
    U, _, Vh = torch.linalg.svd(x, full_matrices=False)
    inner = U.T @ newton_schulz(x, steps=5, kind="quintic") @ Vh.T
    torch.testing.assert_close(inner, torch.diag(torch.diagonal(inner)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["cubic", "quintic"])
def test_batched_equals_one_matrix_at_a_time(kind):
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = newton_schulz(x, 4, kind)
    for idx in [(0, 0), (1, 2), (0, 1)]:
        torch.testing.assert_close(got[idx], newton_schulz(x[idx], 4, kind), rtol=0, atol=1e-12)
    # The tall case iterates on the transpose.
    torch.testing.assert_close(newton_schulz(x.transpose(-1, -2), 4, kind),
                               got.transpose(-1, -2), rtol=0, atol=1e-12)  # fmt: skip


def test_zero_matrix_is_safe_and_differentiable():
    x = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    y = newton_schulz(x, 5)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.zeros(3, 4, dtype=torch.float64))
    assert torch.isfinite(x.grad).all()


def test_gradients_match_finite_differences():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: newton_schulz(t, 3, "quintic"), (x.requires_grad_(),))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="matrices"):
        newton_schulz(torch.ones(3), 2)
    with pytest.raises(ValueError, match="quintic"):
        newton_schulz(torch.ones(2, 2), 2, kind="septic")


def reference(x: torch.Tensor, steps: int, kind: str) -> torch.Tensor:
    """The iteration as plain autograd ops, the reference for the written-out backward."""
    x = x / x.square().sum(dim=(-2, -1), keepdim=True).add(1e-14).sqrt()
    tall = x.shape[-2] > x.shape[-1]
    x = x.transpose(-1, -2) if tall else x
    a, b, c = (3.4445, -4.7750, 2.0315) if kind == "quintic" else (1.5, -0.5, 0.0)
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.transpose(-1, -2) if tall else x


@pytest.mark.parametrize("kind", ["cubic", "quintic"])
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 6, 4), (5, 5)])
def test_gradient_is_autograd_of_the_plain_iteration(kind, shape):
    gen = torch.Generator().manual_seed(len(shape) + shape[-1])
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(*shape, generator=gen, dtype=torch.float64)
    got = newton_schulz(x, 5, kind)
    want = reference(x, 5, kind)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    (g_got,) = torch.autograd.grad((got * weight).sum(), x)
    (g_want,) = torch.autograd.grad((want * weight).sum(), x)
    assert g_want.abs().max() > 1e-3  # a gradient that could be wrong
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-10)
    assert torch.autograd.gradcheck(lambda t: newton_schulz(t, 3, kind), (x,))
