"""Retention gates: how the state of a memory layer maps to its visible weights (Miras §3.3).

``l2``  (Titans / Miras eq. 17): the state is the weight matrix; the ``(1 - alpha)`` decay of
        the update rule is the retention.
``kl``  (Memora, Miras eq. 27): the state is a logit matrix Z following the same linear
        recurrence; the visible weights are ``c * softmax(Z)`` over the input dim (the
        mirror-descent / multiplicative update of a KL-regularized memory).
``lq``  (Moneta, Miras eqs. 24-25): the state A follows the linear recurrence; the visible
        weights are ``A / ||A||_q^(q-2)`` with the entrywise q-norm of the whole matrix,
        computed as ``(sum |A|^q + eps)^((q-2)/q)`` so that A = 0 is safe.

kl and lq are nonlinear in the state, so the chunk form re-normalizes only at chunk
boundaries (Miras §5); README.md §4 gives the exact read rule.
"""

from __future__ import annotations

import torch

RETENTIONS = ("l2", "kl", "lq")
LQ_EPS = 1e-6


def visible_weights(
    state: torch.Tensor, retention: str, q_norm: float = 4.0, kl_scale: float = 1.0
) -> torch.Tensor:
    """Visible weights [..., out, in] of one layer state [..., out, in]."""
    if retention == "l2":
        return state
    if retention == "kl":
        return kl_scale * torch.softmax(state, dim=-1)
    if retention == "lq":
        power = state.abs().pow(q_norm).sum(dim=(-2, -1), keepdim=True)  # ||A||_q^q
        return state / (power + LQ_EPS).pow((q_norm - 2.0) / q_norm)
    raise ValueError(f"retention must be one of {RETENTIONS}, got {retention!r}")
