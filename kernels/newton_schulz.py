"""Newton-Schulz orthogonalization: the map behind Muon, M3 and Atlas's inner optimizer.

Nested Learning eqs. 42-44 read it as a learned map P with objective ``||P(g)^T P(g) - I||^2``;
one gradient step on that objective from ``O = g`` is the cubic iteration

    X <- 1.5 X - 0.5 X X^T X,

which drives every singular value of X towards 1 (its polar factor U V^T) when they start in
(0, sqrt(3)). Muon's quintic iteration ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and
(a, b, c) = (3.4445, -4.7750, 2.0315) gets there in fewer steps but only approximately (the
singular values end near, not at, 1). Both start from X divided by its Frobenius norm, so
the singular values are at most 1.

Batched over leading dims, in the input's dtype, and differentiable once: the iteration is an
autograd Function with its backward written out (the in-context Muon rule of a deep memory
backpropagates through it; a second derivative raises instead of coming out wrong).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

KINDS = ("cubic", "quintic")
QUINTIC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NORM_EPS = 1e-7


def newton_schulz(x: torch.Tensor, steps: int, kind: str = "quintic") -> torch.Tensor:
    """Approximate polar factor of every matrix in ``x`` [..., m, n] after ``steps`` iterations."""
    if x.ndim < 2:
        raise ValueError(f"Newton-Schulz needs matrices, got shape {tuple(x.shape)}")
    if kind not in KINDS:
        raise ValueError(f"unknown Newton-Schulz kind {kind!r}: expected 'quintic' or 'cubic'")
    # sqrt(sum x^2 + eps^2) rather than norm + eps: differentiable at a zero matrix.
    norm = x.square().sum(dim=(-2, -1), keepdim=True).add(NORM_EPS**2).sqrt()
    x = x / norm
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-1, -2)  # iterate on the wide side: X X^T is the smaller Gram matrix
    shape = x.shape
    x = _Iterate.apply(x.reshape(-1, *shape[-2:]), steps, *_coefficients(kind))
    x = x.reshape(shape)
    return x.transpose(-1, -2) if tall else x


def _coefficients(kind: str) -> tuple[float, float, float]:
    """(a, b, c) of the step ``X <- a X + (b A + c A^2) X``, ``A = X X^T``."""
    return QUINTIC_COEFFICIENTS if kind == "quintic" else (1.5, -0.5, 0.0)


class _Iterate(torch.autograd.Function):
    """The Newton-Schulz steps on a batch of wide matrices [N, m, n] (m <= n), with a backward
    written out: per step four products where autograd's would take six and its scaled copies.
    Per step, with ``P = b A + c A^2`` (symmetric) and G the gradient of the step's output:
    ``dX = a G + P G + D X`` with ``Q = G X^T + X G^T`` and ``D = b Q + c (Q A + A Q)``.
    Atlas runs it on every token's momentum, where it is most of the model's arithmetic."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, steps: int, a: float, b: float, c: float) -> torch.Tensor:
        saved = []
        for _ in range(steps):
            gram = x @ x.transpose(-1, -2)
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c) if c else b * gram
            saved += [x, gram, poly]
            x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
        ctx.save_for_backward(*saved)
        ctx.coefficients = a, b, c
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, b, c = ctx.coefficients
        saved = ctx.saved_tensors
        for i in range(len(saved) - 3, -1, -3):
            x, gram, poly = saved[i : i + 3]
            q = grad @ x.transpose(-1, -2)
            q = q + q.transpose(-1, -2)
            if c:
                qa = q @ gram
                d = torch.add(qa, qa.transpose(-1, -2)).mul_(c).add_(q, alpha=b)
            else:
                d = b * q
            grad = torch.baddbmm(torch.baddbmm(grad, poly, grad, beta=a), d, x)
        return grad, None, None, None, None
