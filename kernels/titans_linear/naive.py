"""Titans linear memory with momentum, per-token loop: the reference oracle.

Titans (Behrouz et al., 2025) §3.2, eqs. (9)-(14), with a linear memory ``M`` [K, V] and the
associative loss ``l(M; k, v) = 1/2 ||M^T k - v||^2`` (eq. 12). The surprise gradient of
every token is taken at the weights of the last chunk boundary ``M_{t0}`` (Titans §3.2,
"parallelizable training"), so ``chunk_size=1`` is the exact per-token recurrence:

    S_t = eta_t S_{t-1} - theta_t k_t (M_{t0}^T k_t - v_t)^T      (momentum, eq. 10)
    M_t = (1 - alpha_t) M_{t-1} + S_t                             (forgetting, eq. 13)
    o_t = scale * M_t^T q_t                                       (retrieval, eq. 15)

Slow on purpose: one step per token.
"""

from __future__ import annotations

import torch


def titans_linear_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    *,
    chunk_size: int = 16,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    initial_momentum: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Loop form of the Titans linear memory.

    q, k: [B, T, H, K]; v: [B, T, H, V]; theta (step), eta (momentum decay), alpha (forget):
    [B, T, H]; initial_state (M), initial_momentum (S): [B, H, K, V].
    Returns o [B, T, H, V] and ``(M_T, S_T)`` when ``output_final_state`` else None.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    M = q.new_zeros(B, H, K, V) if initial_state is None else initial_state  # [B, H, K, V]
    S = q.new_zeros(B, H, K, V) if initial_momentum is None else initial_momentum
    M0 = M
    outs = []
    for t in range(T):
        if t % chunk_size == 0:
            M0 = M  # gradients of this chunk are taken at the chunk-start weights
        q_t, k_t, v_t = q[:, t], k[:, t], v[:, t]  # [B, H, K] / [B, H, V]
        err = torch.einsum("bhkv,bhk->bhv", M0, k_t) - v_t  # [B, H, V], M0^T k - v
        grad = k_t.unsqueeze(-1) * err.unsqueeze(-2)  # [B, H, K, V], k err^T
        S = eta[:, t, :, None, None] * S - theta[:, t, :, None, None] * grad
        M = (1.0 - alpha[:, t, :, None, None]) * M + S
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", M, q_t))  # [B, H, V]
    o = torch.stack(outs, dim=1)  # [B, T, H, V]
    return o, ((M, S) if output_final_state else None)
