"""Linear attention, per-token loop: the reference oracle.

Implements causal linear attention (Katharopoulos et al., 2020, *Transformers are RNNs*, identity
feature map), README.md eq. (1)-(2), one token at a time:
``S_t = S_{t-1} + k_t v_t^T`` and ``o_t = scale * S_t^T q_t`` (write, then read).
Slow on purpose; it is what every other backend is tested against.
"""

from __future__ import annotations

import torch


def linear_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loop form of linear attention. ``chunk_size`` is accepted and ignored (uniform signature).

    q, k: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V].
    Returns o [B, T, H, V] and the final state [B, H, K, V] (or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state  # [B, H, K, V]
    outs = []
    # unbind (not k[:, t]) so that backward stacks the per-token gradients once.
    for q_t, k_t, v_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), strict=True):
        S = S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [B, H, K, V]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))  # [B, H, V]
    o = torch.stack(outs, dim=1)  # [B, T, H, V]
    return o, (S if output_final_state else None)
