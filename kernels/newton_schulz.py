"""Newton-Schulz orthogonalization: the map behind Muon, M3 and Atlas's inner optimizer.

Nested Learning eqs. 42-44 read it as a learned map P with objective ``||P(g)^T P(g) - I||^2``;
one gradient step on that objective from ``O = g`` is the cubic iteration

    X <- 1.5 X - 0.5 X X^T X,

which drives every singular value of X towards 1 (its polar factor U V^T) when they start in
(0, sqrt(3)). Muon's quintic iteration ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and
(a, b, c) = (3.4445, -4.7750, 2.0315) gets there in fewer steps but only approximately (the
singular values end near, not at, 1). Both start from X divided by its Frobenius norm, so
the singular values are at most 1.

Batched over leading dims, in the input's dtype, and plain torch ops, so it is differentiable
(the in-context Muon rule of a deep memory backpropagates through it).
"""

from __future__ import annotations

import torch

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
    # Batched products with their scaled sums fused in (baddbmm): three products per quintic
    # step and no elementwise pass over the matrices (Atlas runs this on every token's momentum).
    shape = x.shape
    x = x.reshape(-1, *shape[-2:])
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        if kind == "cubic":
            x = torch.baddbmm(x, gram, x, beta=1.5, alpha=-0.5)  # 1.5 X - 0.5 A X
        else:
            a, b, c = QUINTIC_COEFFICIENTS
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
            x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    x = x.reshape(shape)
    return x.transpose(-1, -2) if tall else x
