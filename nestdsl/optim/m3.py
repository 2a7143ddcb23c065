"""M3, the Multi-scale Momentum Muon optimizer of Nested Learning (Algorithm 1), as printed.

The computation is the declaration specs/optimizers/m3.yaml (three memories of the gradients:
a fast and a slow momentum and Adam's second moment) run by the one implementation,
`DeclaredOptimizer`; this class is its preset with the settings as keyword arguments, checked.

For every parameter `theta` with gradient `g_t` at update `t`:

    fast momentum   M1 += beta1 * g_t                               (every update)
    slow momentum   M2 += beta3 * (sum of the f gradients of the previous block)
                                                                    (every f updates)
    second moment   V  += beta2 * g_t ** 2                          (every update)
    O1 = NS_T(M1),  O2 = NS_T(M2)                                   (Newton-Schulz, T steps)
    theta -= lr * (O1 + alpha * O2) / sqrt(V + eps)

Choices made where the printed algorithm is silent or ambiguous:

* Momenta and V are plain running sums, exactly as printed: there are no decay (EMA) factors,
  so M1 and M2 grow without bound and V behaves like Adagrad's accumulator (the effective step
  shrinks roughly like 1/sqrt(t)). beta1, beta2 and beta3 are therefore scales, not decays.
* The paper's slow-momentum sum runs over i = (k-1)f .. kf, which is f + 1 gradients and
  overlaps the next block's sum by one; here every gradient is counted exactly once: at the
  first update of block k (updates kf .. kf+f-1, 0-based) M2 absorbs the f gradients of block
  k-1. During block 0, M2 and O2 are zero.
* O2 is computed once per block (when M2 changes) and cached, as in the algorithm.
* Newton-Schulz runs on 2-D parameters only, on the matrix normalized by its Frobenius norm
  (transposed so it is wide), with the quintic coefficients of Muon (3.4445, -4.7750, 2.0315)
  by default or the cubic iteration X <- 1.5 X - 0.5 X X^T X (`ns_kind="cubic"`). Embedding
  tables and output heads are 2-D too and are orthogonalized like any matrix (Muon practice
  would leave them to AdamW; the algorithm does not distinguish them). Parameters that are not
  matrices (biases, norm gains, tensors of 3+ dims) skip Newton-Schulz: O = M.
* The element-wise division of an orthogonalized matrix by sqrt(V + eps) is as printed; it makes
  the step size depend inversely on the gradient scale, so `lr` must be smaller than Muon's.
* `weight_decay` (decoupled, as in AdamW) is an addition; it is 0 unless configured.
* Also additions, off by default: `momentum_decay` d multiplies M1 and M2 before each of their
  updates (M <- d M + beta g) and `variance_decay` does the same for V. With the defaults
  (1.0) the algorithm is exactly as printed. As printed, the undamped momentum sums make M3 a
  frictionless heavy ball: on a quadratic the loss falls at first, then oscillates; decays
  below 1 (e.g. 0.9 and 0.999) damp it into an Adam-like method that converges.
"""

from __future__ import annotations

from collections.abc import Iterable

from nestdsl.optim.declared import DeclaredOptimizer, newton_schulz
from nestdsl.optim.library import read_declaration

__all__ = ["M3", "newton_schulz"]


class M3(DeclaredOptimizer):
    """Multi-scale Momentum Muon (Nested Learning, Algorithm 1); see the module docstring."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 3e-4,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        alpha: float = 1.0,
        frequency: int = 8,
        ns_steps: int = 5,
        ns_kind: str = "quintic",
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 1.0,
        variance_decay: float = 1.0,
        period: int = 1,
        schedule: dict | None = None,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be non-negative, got {lr}")
        if len(betas) != 3:
            raise ValueError(f"M3 takes three betas (beta1, beta2, beta3), got {betas}")
        if frequency < 1:
            raise ValueError(f"frequency must be at least 1, got {frequency}")
        if ns_steps < 0:
            raise ValueError(f"ns_steps must be non-negative, got {ns_steps}")
        if ns_kind not in ("quintic", "cubic"):
            raise ValueError(f"ns_kind must be 'quintic' or 'cubic', got {ns_kind!r}")
        for name, decay in (("momentum_decay", momentum_decay), ("variance_decay", variance_decay)):
            if not 0.0 <= decay <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {decay}")
        settings = dict(
            lr=lr,
            betas=tuple(betas),
            alpha=alpha,
            frequency=frequency,
            ns_steps=ns_steps,
            ns_kind=ns_kind,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            variance_decay=variance_decay,
        )
        super().__init__(params, read_declaration("m3"), settings, period, schedule)
