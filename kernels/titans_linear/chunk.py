"""Titans linear memory with momentum, chunk-parallel (dual) form.

Titans §3.2 eqs. (9)-(15) with a linear memory ``M`` [K, V]; surprise gradients at the
chunk-start weights ``M_0`` (the paper's mini-batch gradient descent). Inside a chunk the two
recurrences ``S_t = eta_t S_{t-1} - theta_t G_t`` and ``M_t = (1 - alpha_t) M_{t-1} + S_t``
have scalar gates, so (README.md eq. (4))

    M_t = b_t M_0 + d_t S_0 + sum_{i <= t} w_{t,i} k_i e_i^T,   e_i = M_0^T k_i - v_i,

with ``b, d, w`` built from segment products of the gates
(:func:`nestdsl.kernels.deep_memory.recurrence.chunk_coefficients`, no division by
cumulative products, so ``eta = 0`` and ``alpha = 1`` are safe). Reads are matmuls:
``o_t = scale (b_t M_0^T q_t + d_t S_0^T q_t + sum_i w_{t,i} (q_t . k_i) e_i)``.
Python loops run over chunks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..deep_memory.recurrence import chunk_coefficients


def titans_linear_chunk(
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
    """Chunk form of the Titans linear memory (same contract as ``titans_linear_naive``).

    q, k: [B, T, H, K]; v: [B, T, H, V]; theta, eta, alpha: [B, T, H];
    initial_state (M), initial_momentum (S): [B, H, K, V].
    Returns o [B, T, H, V] and ``(M_T, S_T)`` when ``output_final_state`` else None.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T
    scale = K**-0.5 if scale is None else scale

    # Padded tokens have theta = 0 (no write), eta = 1 and alpha = 0 (no decay): they change
    # nothing before them, their outputs are sliced off and the state is read at row C - pad.
    def chunked(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))  # [B, N*C, H, D]
        return x.transpose(1, 2).reshape(B, H, N, C, x.shape[-1])  # [B, H, N, C, D]

    def chunked_gate(x: torch.Tensor, fill: float) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, pad), value=fill)  # [B, N*C, H]
        return x.transpose(1, 2).reshape(B, H, N, C)  # [B, H, N, C]

    qc, kc, vc = chunked(q), chunked(k), chunked(v)
    coef = chunk_coefficients(
        chunked_gate(theta, 0.0), chunked_gate(eta, 1.0), chunked_gate(alpha, 0.0), "momentum"
    )  # b, d: [B, H, N, C+1]; w: [B, H, N, C+1, C]
    qk = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C], all chunks at once

    M = q.new_zeros(B, H, K, V) if initial_state is None else initial_state  # [B, H, K, V]
    S = q.new_zeros(B, H, K, V) if initial_momentum is None else initial_momentum
    # Split every chunked tensor once: indexing chunk n out of a whole tensor in the loop makes
    # autograd build a zero tensor of the whole sequence per chunk in backward (O(N^2)).
    per_chunk = zip(
        qc.unbind(2), kc.unbind(2), vc.unbind(2), qk.unbind(2), coef.b.unbind(2),
        coef.d.unbind(2), coef.w.unbind(2), coef.s_b.unbind(2), coef.s_w.unbind(2), strict=True,
    )  # fmt: skip
    outs = []
    for n, (q_n, k_n, v_n, qk_n, b, d, w, s_b, s_w) in enumerate(per_chunk):
        # q_n, k_n: [B, H, C, K]; b, d: [B, H, C+1]; w: [B, H, C+1, C]
        err = k_n @ M - v_n  # [B, H, C, V], e_i = M_0^T k_i - v_i
        o = b[..., 1:, None] * (q_n @ M) + d[..., 1:, None] * (q_n @ S)  # [B, H, C, V]
        o = o + (qk_n * w[..., 1:, :]) @ err  # lower-triangular w keeps it causal
        outs.append(scale * o)
        # Padding is neutral for S but not for M (M_t = M_{t-1} + S_t keeps adding S), so the
        # state leaves the last chunk at its last real token, not at the padded end.
        row = C if n < N - 1 else C - pad
        k_t = k_n.transpose(-1, -2)  # [B, H, K, C]
        M_next = b[..., row, None, None] * M + d[..., row, None, None] * S
        M_next = M_next + k_t @ (w[..., row, :, None] * err)  # [B, H, K, V]
        S = s_b[..., row, None, None] * S + k_t @ (s_w[..., row, :, None] * err)
        M = M_next
    o = torch.cat(outs, dim=2)[:, :, :T].transpose(1, 2)  # [B, T, H, V]
    return o, ((M, S) if output_final_state else None)
