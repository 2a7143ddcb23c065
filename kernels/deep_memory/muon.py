"""The Muon rule of an in-context memory (Atlas eqs. 32-33), in chunk form.

Per layer, with the gradient ``G_t = x_t a_t^T`` of token t at the chunk-start weights:

    S_t = eta_t S_{t-1} + G_t,      W_t = r_t W_{t-1} - theta_t NS_k(S_t)     (r = 1 - alpha)

Inside a chunk the momentum is linear in the drives, so every ``S_t`` is one matmul of the
segment products of ``eta`` (recurrence.py) with the rank-one drives; Newton-Schulz then runs
on all C momenta at once (Atlas §5: "all S_t, and hence NS(S_t), can be computed in
parallel"), and the weights are one more matmul of the segment products of ``r``. Unlike the
other rules the update is not rank one, so the per-token weights are formed: C matrices per
layer and chunk, which is why the chunks of a Muon memory should stay small.
"""

from __future__ import annotations

import torch

from ..newton_schulz import newton_schulz
from .recurrence import segment_products


def muon_chunk(
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    W0: torch.Tensor,
    S0: torch.Tensor,
    a: torch.Tensor,
    x: torch.Tensor,
    ns_steps: int,
    ns_kind: str = "quintic",
    band: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and momenta of one layer after every token of one chunk.

    theta, eta, alpha: [..., C] gates; W0, S0: [..., out, in] chunk-start weights and momentum;
    a: [..., C, in] layer inputs; x: [..., C, out] local errors (drives); with an Omega window
    (window.py) a and x cover C + c - 1 tokens and ``band`` [C, C + c - 1] mixes them into
    the C drives. Returns ``W`` and
    ``S`` [..., C+1, out, in], row t the state after token t (row 0 = the chunk start).
    """
    Pe = segment_products(eta)  # [..., C+1, C+1]
    G = x.unsqueeze(-1) * a.unsqueeze(-2)  # [..., C (+ c - 1), out, in]
    mix = Pe[..., 1:, 1:] if band is None else Pe[..., 1:, 1:] @ band
    S = Pe[..., 1:, :1, None] * S0.unsqueeze(-3) + torch.einsum("...ti,...ioj->...toj", mix, G)
    O = newton_schulz(S, ns_steps, ns_kind)  # [..., C, out, in]
    Pr = segment_products(1.0 - alpha)  # [..., C+1, C+1]
    w = Pr[..., :, 1:] * -theta.unsqueeze(-2)  # [..., C+1, C]
    W = Pr[..., :, :1, None] * W0.unsqueeze(-3) + torch.einsum("...ti,...ioj->...toj", w, O)
    return W, torch.cat([S0.unsqueeze(-3), S], dim=-3)
