"""Linear attention, chunk-parallel PyTorch form.

Causal linear attention (Katharopoulos et al., 2020) evaluated by README.md eq. (3)-(5): inside a chunk ``O = Q S_prev + (Q K^T ⊙ M) V`` with the
inclusive causal mask ``M``; across chunks ``S_next = S_prev + K^T V``. The chunk states are
an exclusive prefix sum of the per-chunk ``K^T V``, so there is no Python loop at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    N = -(-T // C)
    scale = K**-0.5 if scale is None else scale

    def chunked(x: torch.Tensor) -> torch.Tensor:
        # Zero tokens add k v^T = 0 to the state and their outputs are sliced off.
        x = F.pad(x, (0, 0, 0, 0, 0, N * C - T))  # [B, N*C, H, D]
        return x.transpose(1, 2).reshape(B, H, N, C, x.shape[-1])  # [B, H, N, C, D]

    qc, kc, vc = chunked(q) * scale, chunked(k), chunked(v)

    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, K, V]
    prefix = kv.cumsum(dim=2)  # [B, H, N, K, V], state after chunk n minus S_0
    before = torch.cat([torch.zeros_like(kv[:, :, :1]), prefix[:, :, :-1]], dim=2)
    if initial_state is not None:
        before = before + initial_state.unsqueeze(2)  # [B, H, N, K, V]

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # [C, C]
    scores = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0)  # [B, H, N, C, C]
    o = qc @ before + scores @ vc  # [B, H, N, C, V]
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).contiguous()  # [B, T, H, V]

    final = None
    if output_final_state:
        final = prefix[:, :, -1]  # [B, H, K, V]
        if initial_state is not None:
            final = final + initial_state
    return o, final
