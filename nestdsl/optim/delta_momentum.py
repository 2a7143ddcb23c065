"""Delta Momentum, the momentum with an l2 (delta-rule) objective of Nested Learning (eqs. 48-49).

The paper replaces momentum's dot-product objective with the l2 one `||m ∇L^T - P_i||²`, whose
gradient step is the delta rule

    m_{i+1} = m_i (alpha I - ∇L ∇L^T) - eta P_i ∇L,        W_{i+1} = W_i + m_{i+1}.

Plain momentum decays its memory by alpha in every direction; here the direction of the new
gradient is also erased before the gradient is written, so the momentum "learns to forget"
instead of accumulating. The computation is the declaration specs/optimizers/delta-momentum.yaml
(one elementwise memory written by the `dgd` rule) run by the one implementation,
`DeclaredOptimizer`; this class is its preset. For every parameter `p` with gradient `g`:

    k = g / sqrt(||g||² + eps²)                       the key: the unit gradient
    m <- alpha m - forget <m, k> k + g                 momentum_buffer (alpha = `momentum`)
    p <- p (1 - lr weight_decay)                        decoupled weight decay
    p <- p - lr m

Choices made where the paper leaves room:

* Each parameter tensor is one memory: its gradient, whatever its shape, is treated as one
  vector, and `<., .>` and `||.||` are the Frobenius inner product and norm. The outer product
  `∇L ∇L^T` of the paper is the rank-one map `m -> <m, g> g` on that vector space.
* The key is the unit gradient, not the raw one. NL's delta rules assume normalized keys (e.g.
  DGD's `||x_t|| = λ`); with the raw gradient the factor along g would be
  `alpha - ||g||²`, which leaves (-1, 1) as soon as `||g||² > 1 + alpha` and the momentum then
  grows geometrically. With the unit key the linear map applied to m has eigenvalue `alpha`
  orthogonal to g and `alpha - forget` along g, both in [-1, 1]. `eps` (default 1e-8) keeps the
  key finite for a zero gradient: it is then 0, and m only decays by alpha.
* `P_i = I` (no preconditioner) and eta is folded into `lr`, which the training schedule sets.
* Sign: the buffer stores the positive (gradient) direction, as torch's SGD does, and the step
  subtracts it; the paper stores `-eta` times it and adds. With a constant rate the two are the
  same trajectory; with the training schedule the current `lr` scales the step, not what is
  stored (as in torch's SGD), so a change of rate takes effect at once.
* `forget` (in [0, 1], default 1) is the delta rule's step size on the erase term, an addition:
  `forget = 1` is the paper's rule with a unit key, `forget = 0` is exactly heavy-ball
  momentum (torch SGD with `momentum=alpha, dampening=0, nesterov=False`, no weight decay).
  For a gradient that keeps its direction, the momentum's component along it settles at
  `|g| / (1 - alpha + forget)` instead of heavy ball's `|g| / (1 - alpha)`: with alpha = 0.9
  and forget = 1, about 0.91 |g| instead of 10 |g|. Components orthogonal to the current
  gradient decay by alpha only, as in heavy ball, so the old directions stay remembered.
* `weight_decay` is decoupled (as in AdamW) and, through `build_optimizer`, applies to 2-D and
  larger parameters only; it is 0 unless configured.
* State is one tensor per parameter, `momentum_buffer`, in the parameter's dtype, and the
  memory's written weight `momentum_buffer.mass` (a scalar every declared memory keeps;
  both are saved in safetensors checkpoints). The two scalars `<m, g>` and
  `||g||²` are reduced in float32 (float64 for float64 parameters) and stay on the device: no
  host synchronization per parameter.
"""

from __future__ import annotations

from collections.abc import Iterable

from nestdsl.optim.declared import DeclaredOptimizer
from nestdsl.optim.library import read_declaration


class DeltaMomentum(DeclaredOptimizer):
    """Delta Momentum (Nested Learning eqs. 48-49) with a unit-gradient key; see the module doc."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 3e-4,
        momentum: float = 0.9,
        forget: float = 1.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        period: int = 1,
        schedule: dict | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not 0.0 <= forget <= 1.0:
            raise ValueError(f"forget must be in [0, 1], got {forget}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        settings = dict(lr=lr, momentum=momentum, forget=forget, weight_decay=weight_decay, eps=eps)
        super().__init__(params, read_declaration("delta-momentum"), settings, period, schedule)
