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

from ..linear_attention.chunk import to_chunks


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
    scale = K**-0.5 if scale is None else scale

    # Padded tokens have k = 0, beta = 0, g = 0: they write nothing, erase nothing and do not
    # decay the state, so the final state is unchanged; their outputs are sliced off.
    qc, kc, vc = to_chunks(q, C), to_chunks(k, C), to_chunks(v, C)  # [B, H, N, C, D]
    bc = to_chunks(beta.unsqueeze(-1), C).squeeze(-1)  # [B, H, N, C]
    N = qc.shape[2]

    ones = torch.ones(C, C, dtype=torch.bool, device=q.device)
    lower = ones.tril()  # [C, C], [t, i] = (i <= t)
    kk = kc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
    qk = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C]

    if g is None:
        decay = lower.to(q.dtype)  # [C, C]
        rhs_k = bc.unsqueeze(-1) * kc  # [B, H, N, C, K]
        q_inter = qc * scale  # [B, H, N, C, K]
        k_out = kc  # [B, H, N, C, K]
        chunk_decay = torch.ones((), dtype=q.dtype, device=q.device)
    else:
        gc = to_chunks(g.unsqueeze(-1), C).squeeze(-1)  # [B, H, N, C]
        G = gc.cumsum(dim=-1)  # [B, H, N, C], log decay from the chunk start, <= 0
        # seg[t, i] = sum_{i < s <= t} g_s = G_t - G_i, summed directly rather than as a
        # difference of cumulative sums, which would cancel catastrophically (float32 error
        # ~ eps |G|) once |G| is large. Every entry is a sum of g <= 0, so exp never overflows.
        strict = ones.tril(-1)  # [C, C], [t, i] = (i < t)
        seg = gc.unsqueeze(-1).expand(*gc.shape, C).masked_fill(~strict, 0.0).cumsum(dim=-2)
        decay = seg.exp().masked_fill(~lower, 0.0)  # [B, H, N, C, C]
        gamma = G.exp().unsqueeze(-1)  # [B, H, N, C, 1]
        rhs_k = (bc.unsqueeze(-1) * gamma) * kc
        q_inter = qc * (gamma * scale)
        k_out = kc * seg[..., -1, :].exp().unsqueeze(-1)  # [B, H, N, C, K], G_last - G_i
        chunk_decay = G[..., -1:].exp().unsqueeze(-1)  # [B, H, N, 1, 1]

    # The unit-triangular solve never reads A's diagonal (and its gradient there is zero),
    # so A may keep the diagonal of the inclusive decay mask.
    A = kk * decay * bc.unsqueeze(-1)  # [B, H, N, C, C]
    P = qk * decay * scale  # [B, H, N, C, C]

    # UT transform, eq. (7): one batched solve for both right-hand sides. Solving the
    # transposed system from the right lets LAPACK use both operands in place (no copies).
    rhs = torch.cat([bc.unsqueeze(-1) * vc, rhs_k], dim=-1)  # [B, H, N, C, V+K]
    X = torch.linalg.solve_triangular(
        A.transpose(-1, -2), rhs.transpose(-1, -2), upper=True, left=False, unitriangular=True
    ).transpose(-1, -2)  # [B, H, N, C, V+K] = [U0 | W]

    # Eq. (10)-(11): everything that does not depend on the chunk's start state is batched
    # over chunks, so the loop below is one small matmul per chunk. X = [U0 | W] is
    # multiplied as a whole: P X = [P U0 | P W] and K~^T X = [D | K~^T W].
    PX = P @ X  # [B, H, N, C, V+K]
    o_intra, q_eff = PX[..., :V], q_inter - PX[..., V:]  # [B, H, N, C, V], [B, H, N, C, K]
    KX = k_out.transpose(-1, -2) @ X  # [B, H, N, K, V+K]
    eye = torch.eye(K, dtype=q.dtype, device=q.device)
    D, M = KX[..., :V], chunk_decay * eye - KX[..., V:]  # [B, H, N, K, V], [B, H, N, K, K]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    S = S.reshape(B * H, K, V)  # [B*H, K, V]
    starts = []
    # unbind so that backward stacks the per-chunk gradients once.
    for M_n, D_n in zip(M.unbind(2), D.unbind(2), strict=True):
        starts.append(S)
        S = torch.baddbmm(D_n.reshape(B * H, K, V), M_n.reshape(B * H, K, K), S)
    S_start = torch.stack(starts, dim=1)  # [B*H, N, K, V]

    o = o_intra + q_eff @ S_start.view(B, H, N, K, V)  # [B, H, N, C, V]
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).contiguous()  # [B, T, H, V]
    return o, (S.reshape(B, H, K, V) if output_final_state else None)
