"""Linear attention, chunk-parallel PyTorch form.

Causal linear attention (Katharopoulos et al., 2020) evaluated by README.md eq. (3)-(5):
inside a chunk ``O = scale (Q S_prev + (Q K^T ⊙ M) V)`` with the inclusive causal mask ``M``;
across chunks ``S_next = S_prev + K^T V``. The chunk states are an exclusive prefix sum of
the per-chunk ``K^T V``; the only Python loop is that sum, one addition per chunk.
"""

from __future__ import annotations

import torch


def to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, D] -> contiguous [B, H, N, C, D], zero-padded to N = ceil(T / C) chunks.

    One copy: ``F.pad`` would keep the transposed strides and force a second copy later.
    """
    B, T, H, D = x.shape
    N = -(-T // C)
    xt = x.transpose(1, 2)  # [B, H, T, D]
    if N * C == T:
        return xt.contiguous().view(B, H, N, C, D)
    pad = xt.new_zeros(B, H, N * C - T, D)
    return torch.cat([xt, pad], dim=2).view(B, H, N, C, D)


def linear_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk form of linear attention.

    q, k: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V].
    Returns o [B, T, H, V] and the final state [B, H, K, V] (or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = K**-0.5 if scale is None else scale
    # Zero tokens add k v^T = 0 to the state and their outputs are sliced off.
    qc, kc, vc = to_chunks(q, C), to_chunks(k, C), to_chunks(v, C)  # [B, H, N, C, D]
    N = qc.shape[2]

    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, K, V]
    # Eq. (5) as a running sum over chunks: on CPU a Python loop of N adds is ~8x faster than
    # torch.cumsum along a non-innermost axis, and it adds S_0 for free.
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state  # [B, H, K, V]
    starts = []
    for kv_n in kv.unbind(2):  # unbind: backward stacks the per-chunk gradients once
        starts.append(S)
        S = S + kv_n
    before = torch.stack(starts, dim=2)  # [B, H, N, K, V], state before each chunk

    # Masking and scaling in one multiply; the scale goes on the small [C, C] and [K, V]
    # operands rather than on q.
    causal = torch.ones(C, C, dtype=q.dtype, device=q.device).tril_() * scale  # [C, C]
    scores = (qc @ kc.transpose(-1, -2)) * causal  # [B, H, N, C, C]
    inter = qc @ (before * scale)  # [B, H, N, C, V]
    o = torch.baddbmm(
        inter.reshape(-1, C, V), scores.reshape(-1, C, C), vc.reshape(-1, C, V)
    )  # [B*H*N, C, V]
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).contiguous()  # [B, T, H, V]
    return o, (S if output_final_state else None)
