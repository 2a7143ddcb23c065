"""The Muon rule of an in-context memory (Atlas eqs. 32-33), in chunk form.

Per layer, with the gradient ``G_t = x_t a_t^T`` of token t at the chunk-start weights:

    S_t = eta_t S_{t-1} + G_t,      W_t = r_t W_{t-1} - theta_t NS_k(S_t)     (r = 1 - alpha)

Inside a chunk the momentum is linear in the drives, so every ``S_t`` is one matmul of the
segment products of ``eta`` (recurrence.py) with the rank-one drives; Newton-Schulz then runs
on all C momenta at once (Atlas §5: "all S_t, and hence NS(S_t), can be computed in
parallel"). Unlike the other rules the update is not rank one, so the C momenta and their
orthogonalizations ``O_t`` are formed, which is why the chunks of a Muon memory should stay
small. The weights are not: with the segment products ``P`` of ``r`` every row is

    W_t = P[t, 0] W_0 + sum_{i <= t} w[t, i] O_i,      w[t, i] = -P[t, i] theta_i

so a read ``W_t q_t`` is ``P[t, 0] W_0 q_t`` plus one matmul of all ``O_i`` with all queries,
mixed by ``w``, and the chunk end is one weighted sum of the ``O_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..newton_schulz import newton_schulz
from .recurrence import segment_products


@dataclass(frozen=True)
class MuonChunk:
    """One layer's chunk under the Muon rule: the momenta ``S`` and their orthogonalizations
    ``O`` [..., C, out, in] after every token, and the rows ``P`` [..., C+1, C+1] (segment
    products of ``1 - alpha``) and ``w`` [..., C+1, C] that make the weights from them."""

    W0: torch.Tensor
    S0: torch.Tensor
    S: torch.Tensor
    O: torch.Tensor
    P: torch.Tensor
    w: torch.Tensor

    def weights(self, row: int) -> torch.Tensor:
        """``W_row`` [..., out, in] (row 0 = the chunk start)."""
        mixed = torch.einsum("...i,...ioj->...oj", self.w[..., row, :], self.O)
        return torch.addcmul(mixed, self.P[..., row, :1, None], self.W0)

    def momentum(self, row: int) -> torch.Tensor:
        """``S_row`` [..., out, in]; a copy, so that it does not keep every momentum alive
        as the next chunk's state (or as a recomputed group's output)."""
        return self.S0 if row == 0 else self.S[..., row - 1, :, :].clone()

    def read(self, rows: slice, r: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """``W_t r_t`` [..., C, out] for the weights of ``rows``, with ``start`` [..., out, in]
        in the place of ``W_0`` (the visible chunk-start weights: ``W_t`` moves by
        ``P[t, 0] (start - W_0)``, as it would had the chunk started there)."""
        C, out = self.O.shape[-3], self.O.shape[-2]
        # Every O_i applied to every query at once: [..., C * out, in] @ [..., in, C] (i, o, t).
        R = (self.O.flatten(-3, -2) @ r.transpose(-1, -2)).unflatten(-2, (C, out))
        mixed = torch.einsum("...ti,...iot->...to", self.w[..., rows, :], R)
        return torch.addcmul(mixed, self.P[..., rows, :1], r @ start.transpose(-1, -2))


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
) -> MuonChunk:
    """One layer's chunk.

    theta, eta, alpha: [..., C] gates; W0, S0: [..., out, in] chunk-start weights and momentum;
    a: [..., C, in] layer inputs; x: [..., C, out] local errors (drives); with an Omega window
    (window.py) a and x cover C + c - 1 tokens and ``band`` [C, C + c - 1] mixes them into
    the C drives.
    """
    Pe = segment_products(eta)  # [..., C+1, C+1]
    mix = Pe[..., 1:, 1:] if band is None else Pe[..., 1:, 1:] @ band  # [..., C, n]
    # S_t - Pe[t, 0] S_0 = sum_i mix[t, i] x_i a_i^T = (mix[t] * x)^T a: one matmul per row,
    # without forming the n rank-one terms.
    weighted = mix.unsqueeze(-1) * x.unsqueeze(-3)  # [..., C, n, out]
    S = weighted.transpose(-1, -2) @ a.unsqueeze(-3)  # [..., C, out, in]
    # + Pe[t, 0] S_0 as a product of inner size 1 ([C, 1] @ [1, out * in]): its backward is
    # two more products, where a broadcast multiply would form [C, out, in] twice more.
    C, size = S.shape[-3], S.shape[-2] * S.shape[-1]
    S = torch.baddbmm(S.reshape(-1, C, size), Pe[..., 1:, :1].reshape(-1, C, 1),
                      S0.reshape(-1, 1, size)).view(S.shape)  # fmt: skip
    O = newton_schulz(S, ns_steps, ns_kind)  # [..., C, out, in]
    P = segment_products(1.0 - alpha)  # [..., C+1, C+1]
    return MuonChunk(W0, S0, S, O, P, P[..., :, 1:] * -theta.unsqueeze(-2))
