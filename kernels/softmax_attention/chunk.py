"""Causal softmax attention as a cache memory, parallel form via PyTorch SDPA.

Implements README.md eq. (4): the cache is prepended to the keys/values and one call of
``torch.nn.functional.scaled_dot_product_attention`` evaluates every query at once with the
boolean mask ``p - window < j <= p`` (query at global position p, key at position j), or
``j < sinks`` for the first positions that a window keeps visible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    sinks: int = 0,
    initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Parallel form of cached causal softmax attention.

    q, k: [B, T, H, K]; v: [B, T, H, V]; initial_state: (k_cache [B, Tc, H, K],
    v_cache [B, Tc, H, V]). Returns o [B, T, H, V] and the new cache (or None).
    """
    T, K = q.shape[1], q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    if initial_state is not None:
        keys = torch.cat([initial_state[0], k], dim=1)  # [B, Tc+T, H, K]
        values = torch.cat([initial_state[1], v], dim=1)  # [B, Tc+T, H, V]
    else:
        keys, values = k, v
    L = keys.shape[1]
    Tc = L - T

    qh, kh, vh = q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)  # [B, H, *, D]
    if window is None and Tc == 0:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:
        qpos = torch.arange(Tc, L, device=q.device).unsqueeze(1)  # [T, 1]
        kpos = torch.arange(L, device=q.device).unsqueeze(0)  # [1, L]
        mask = kpos <= qpos  # [T, L]
        if window is not None:
            mask = mask & ((kpos > qpos - window) | (kpos < sinks))
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    o = o.transpose(1, 2).contiguous()  # [B, T, H, V]

    final = None
    if output_final_state:
        start = 0 if window is None else max(0, L - (window - 1))
        if 0 < sinks and start > 0:  # the sinks, then the last window - 1 positions
            sink = min(sinks, start)
            final = tuple(torch.cat([x[:, :sink], x[:, start:]], dim=1) for x in (keys, values))
        else:
            final = (keys[:, start:], values[:, start:])
    return o, final
