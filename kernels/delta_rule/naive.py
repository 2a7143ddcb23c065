"""Gated delta rule, per-token loop: the reference oracle.

Implements the gated delta rule of Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025), in the
[K, V] state layout, README.md eq. (1)-(3), one token at a time:
``S <- exp(g_t) S``; ``S <- S + beta_t k_t (v_t - S^T k_t)^T``; ``o_t = scale * S^T q_t``.
``g=None`` is the plain delta rule (no decay). Slow on purpose.
"""

from __future__ import annotations

import torch


def gated_delta_rule_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loop form of the gated delta rule. ``chunk_size`` is accepted and ignored.

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g (log decay): [B, T, H];
    initial_state: [B, H, K, V]. Returns o [B, T, H, V] and the final state (or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state  # [B, H, K, V]
    decays = [None] * T if g is None else g.exp().unbind(1)  # T x [B, H]
    outs = []
    steps = zip(q.unbind(1), k.unbind(1), v.unbind(1), beta.unbind(1), decays, strict=True)
    for q_t, k_t, v_t, beta_t, decay_t in steps:
        if decay_t is not None:
            S = S * decay_t[..., None, None]
        pred = torch.einsum("bhkv,bhk->bhv", S, k_t)  # [B, H, V], what the memory recalls
        delta = beta_t.unsqueeze(-1) * (v_t - pred)  # [B, H, V]
        S = S + k_t.unsqueeze(-1) * delta.unsqueeze(-2)  # [B, H, K, V]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))  # [B, H, V]
    o = torch.stack(outs, dim=1)  # [B, T, H, V]
    return o, (S if output_final_state else None)
