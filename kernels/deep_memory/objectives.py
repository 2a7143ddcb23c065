"""Attentional-bias objectives of a deep memory (Miras §3.1, eqs. 9-12; Titans eq. 12).

For a token with memory output ``y = M(k)`` and target ``v`` (``e = y - v``):

    l2     1/2 ||e||^2                                     dl/dy = e
    dot    -<y, v>           (Hebbian; linear attention)     dl/dy = -v
    lp     ||e||_p^p         (Miras "Moneta" bias, p > 1)    dl/dy = p sign(e) |e|^(p-1)
    huber  sum_j H_delta(e_j)  (Miras eqs. 13-14)            dl/dy = clamp(e, -delta, delta)
    huber_norm                 (Miras eq. 26, Yaad)          dl/dy = e if ||e|| <= delta,
           1/2 ||e||^2 if ||e|| <= delta,                            delta sign(e) otherwise
           delta ||e||_1 otherwise

``objective_loss`` is used by the autograd oracle, ``objective_grad`` by the chunk form.
The Huber threshold ``delta`` is a float or a tensor broadcast against ``[..., C, 1]`` (Yaad's
data-dependent ``delta_t``, one per token and head). ``huber`` switches between its l2 and l1
branches per coordinate of the error, ``huber_norm`` on the l2 norm of the whole error, as
Yaad's update (eq. 26) does: the l2 step while the memory is close, a clipped sign step
otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("l2", "dot", "lp", "huber", "huber_norm")


def objective_loss(
    y: torch.Tensor, v: torch.Tensor, objective: str, p: float = 3.0,
    delta: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Per-token loss [..., C] of outputs y and targets v [..., C, d_out]."""
    e = y - v
    if objective == "l2":
        return 0.5 * e.pow(2).sum(-1)
    if objective == "dot":
        return -(y * v).sum(-1)
    if objective == "lp":
        return e.abs().pow(p).sum(-1)
    if objective == "huber":
        if not torch.is_tensor(delta):
            return F.huber_loss(y, v, reduction="none", delta=delta).sum(-1)
        small = e.abs() <= delta
        return torch.where(small, 0.5 * e.pow(2), delta * (e.abs() - 0.5 * delta)).sum(-1)
    if objective == "huber_norm":
        d = delta.squeeze(-1) if torch.is_tensor(delta) else delta  # [..., C] like the loss
        near = e.pow(2).sum(-1) <= d**2
        return torch.where(near, 0.5 * e.pow(2).sum(-1), d * e.abs().sum(-1))
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def objective_grad(
    y: torch.Tensor, v: torch.Tensor, objective: str, p: float = 3.0,
    delta: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """dl/dy [..., C, d_out], written out so that it stays differentiable."""
    if objective == "l2":
        return y - v
    if objective == "dot":
        return -v
    if objective == "lp":
        e = y - v
        return p * torch.sign(e) * e.abs().pow(p - 1.0)
    if objective == "huber":
        if not torch.is_tensor(delta):
            return (y - v).clamp(-delta, delta)
        return torch.minimum(torch.maximum(y - v, -delta), delta)
    if objective == "huber_norm":
        e = y - v
        near = e.pow(2).sum(-1, keepdim=True) <= delta**2
        return torch.where(near, e, delta * torch.sign(e))
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")

