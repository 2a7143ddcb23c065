"""Causal softmax attention as a cache memory, per-token loop: the reference oracle.

Standard causal (optionally sliding-window) softmax attention (Vaswani et al., 2017), README.md
eq. (1)-(3): the memory is the list of past (key, value) pairs; token
at global position p reads ``softmax(scale * q_p K_{lo..p}^T) V_{lo..p}`` with ``lo = 0``
(no window) or ``lo = max(0, p - window + 1)``, plus the first ``sinks`` positions, which stay
visible under a window (attention sinks: the persistent tokens of Titans's SW-Attn*). Slow on
purpose.
"""

from __future__ import annotations

import torch


def softmax_attention_naive(
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
    """Loop form of cached causal softmax attention.

    q, k: [B, T, H, K]; v: [B, T, H, V]; initial_state: (k_cache [B, Tc, H, K],
    v_cache [B, Tc, H, V]) holding the positions just before q's first token (after the
    ``sinks`` first positions of the sequence, when a window keeps them).
    Returns o [B, T, H, V] and the new cache (or None).
    """
    T, K = q.shape[1], q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    if initial_state is not None:
        keys = torch.cat([initial_state[0], k], dim=1)  # [B, Tc+T, H, K]
        values = torch.cat([initial_state[1], v], dim=1)  # [B, Tc+T, H, V]
    else:
        keys, values = k, v
    Tc = keys.shape[1] - T
    outs = []
    for t, q_t in enumerate(q.unbind(1)):
        p = Tc + t
        lo = 0 if window is None else max(0, p - window + 1)
        seen = list(range(min(sinks, lo))) + list(range(lo, p + 1))  # sinks, then the window
        k_seen, v_seen = keys[:, seen], values[:, seen]  # [B, L, H, D]
        scores = scale * torch.einsum("bhk,blhk->bhl", q_t, k_seen)  # [B, H, L]
        weights = scores.softmax(dim=-1)  # [B, H, L]
        outs.append(torch.einsum("bhl,blhv->bhv", weights, v_seen))  # [B, H, V]
    o = torch.stack(outs, dim=1)  # [B, T, H, V]

    final = None
    if output_final_state:
        L = keys.shape[1]
        start = 0 if window is None else max(0, L - (window - 1))
        kept = list(range(min(sinks, start))) + list(range(start, L))
        final = (keys[:, kept], values[:, kept])
    return o, final
