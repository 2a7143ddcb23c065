"""Gated delta rule, chunk-parallel PyTorch form (WY representation / UT transform).

The chunk algorithm of Yang et al. (NeurIPS 2024, *Parallelizing Linear Transformers with the
Delta Rule over Sequence Length*) with the decay of Gated DeltaNet, README.md eq. (4)-(11).
Per chunk of C tokens, with the in-chunk cumulative log decay ``G``, the unit lower-triangular
system ``(I + A) [U0 | W] = [diag(b) V | diag(b e^G) K]`` with
``A = tril(diag(b) (K K^T ⊙ e^{G_t - G_i}), -1)`` is solved for all chunks at once
(``torch.linalg.solve_triangular``); the only sequential part is the chunk-to-chunk state
recurrence ``S_next = M S + D`` (eq. 11), a loop over chunks, not over tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gated_delta_rule_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk form of the gated delta rule (``g=None``: plain delta rule).

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g (log decay, <= 0): [B, T, H];
    initial_state: [B, H, K, V]. Returns o [B, T, H, V] and the final state (or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T
    scale = K**-0.5 if scale is None else scale

    # Padded tokens have k = 0, beta = 0, g = 0: they write nothing, erase nothing and do not
    # decay the state, so the final state is unchanged; their outputs are sliced off.
    def chunked(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))  # [B, N*C, H, D]
        return x.transpose(1, 2).reshape(B, H, N, C, x.shape[-1])  # [B, H, N, C, D]

    def chunked_scalar(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, pad))  # [B, N*C, H]
        return x.transpose(1, 2).reshape(B, H, N, C)  # [B, H, N, C]

    qc, kc, vc = chunked(q) * scale, chunked(k), chunked(v)
    bc = chunked_scalar(beta)  # [B, H, N, C]

    ones = torch.ones(C, C, dtype=torch.bool, device=q.device)
    lower = ones.tril()  # [C, C], [t, i] = (i <= t)
    strict = ones.tril(-1)  # [C, C], [t, i] = (i < t)
    kk = kc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
    qk = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C]

    if g is None:
        A = (bc.unsqueeze(-1) * kk).masked_fill(~strict, 0.0)  # [B, H, N, C, C]
        qk = qk.masked_fill(~lower, 0.0)
        rhs_k = bc.unsqueeze(-1) * kc  # [B, H, N, C, K]
        q_inter = qc  # [B, H, N, C, K]
        k_out = kc  # [B, H, N, C, K]
        chunk_decay = None
    else:
        gc = chunked_scalar(g)  # [B, H, N, C]
        G = gc.cumsum(dim=-1)  # [B, H, N, C], log decay from the chunk start, <= 0
        # seg[t, i] = sum_{i < s <= t} g_s = G_t - G_i, summed directly rather than as a
        # difference of cumulative sums, which would cancel catastrophically (float32 error
        # ~ eps |G|) once |G| is large. Every entry is a sum of g <= 0, so exp never overflows.
        seg = gc.unsqueeze(-1).expand(*gc.shape, C).masked_fill(~strict, 0.0).cumsum(dim=-2)
        decay_lower = seg.exp().masked_fill(~lower, 0.0)  # [B, H, N, C, C]
        decay_strict = decay_lower.masked_fill(~strict, 0.0)
        A = bc.unsqueeze(-1) * kk * decay_strict
        qk = qk * decay_lower
        gamma = G.exp().unsqueeze(-1)  # [B, H, N, C, 1]
        rhs_k = (bc.unsqueeze(-1) * gamma) * kc
        q_inter = qc * gamma
        G_last = G[..., -1:]  # [B, H, N, 1]
        k_out = kc * seg[..., -1, :].exp().unsqueeze(-1)  # [B, H, N, C, K], G_last - G_i
        chunk_decay = G_last.exp().unsqueeze(-1)  # [B, H, N, 1, 1]

    # UT transform: one batched unit-lower-triangular solve for both right-hand sides.
    rhs = torch.cat([bc.unsqueeze(-1) * vc, rhs_k], dim=-1)  # [B, H, N, C, V+K]
    X = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    U0, W = X.split([V, K], dim=-1)  # [B, H, N, C, V], [B, H, N, C, K]

    # README eq. (10)-(11): everything that does not depend on the chunk's start state is
    # batched over chunks, so the loop below is one small matmul per chunk.
    k_out_t = k_out.transpose(-1, -2)  # [B, H, N, K, C]
    q_eff = q_inter - qk @ W  # [B, H, N, C, K]
    o_intra = qk @ U0  # [B, H, N, C, V]
    M = -(k_out_t @ W)  # [B, H, N, K, K]
    if chunk_decay is None:
        M = M + torch.eye(K, dtype=q.dtype, device=q.device)
    else:
        M = M + chunk_decay * torch.eye(K, dtype=q.dtype, device=q.device)
    D = k_out_t @ U0  # [B, H, N, K, V]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state  # [B, H, K, V]
    starts = []
    # unbind so that backward stacks the per-chunk gradients once.
    for M_n, D_n in zip(M.unbind(2), D.unbind(2), strict=True):
        starts.append(S)
        S = M_n @ S + D_n
    S_start = torch.stack(starts, dim=2)  # [B, H, N, K, V]

    o = q_eff @ S_start + o_intra  # [B, H, N, C, V]
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).contiguous()  # [B, T, H, V]
    return o, (S if output_final_state else None)
