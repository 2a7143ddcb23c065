"""Per-channel gates on matrix memories, run on the per-head kernels (Miras §5.4, ATLAS eq. 11).

A per-channel gate has one value per head and value channel: the state's rows (one per value
channel c) follow

    M_t[c] = (1 - α_t[c]) M_{t-1}[c] - θ_t[c] ∇_{M[c]} ℓ_t       (diag(1 - α_t), diag(θ_t))

and, for the delta rule, ``S_t[c] = α_t[c] S_{t-1}[c] (I - β_t[c] k_t k_t^T) + β_t[c] v_t[c] k_t^T``.
Row c reads the same keys and queries and its own value channel, and no rule that this module
serves couples rows (l2, dot, lp and elementwise Huber objectives are sums over channels; the
momentum, kl softmax over inputs and delta-rule terms act row by row). So the memory is the
per-head kernel run with ``H * V`` heads of value width 1: keys and queries repeated per channel,
values and gates split per channel. Every kernel (and its Triton form) runs unchanged; the
price is V times the key traffic (docs/architectures.md gives the measured cost).

Layouts: heads are split head-major, channel-minor (head h, channel c -> h * V + c).
"""

from __future__ import annotations

import torch


def repeat_keys(x: torch.Tensor, V: int) -> torch.Tensor:
    """Keys or queries ``[B, T, H, K]`` -> ``[B, T, H * V, K]`` (the same key for each channel)."""
    B, T, H, K = x.shape
    return x.unsqueeze(3).expand(B, T, H, V, K).reshape(B, T, H * V, K)


def split_values(v: torch.Tensor) -> torch.Tensor:
    """Values ``[B, T, H, V]`` -> ``[B, T, H * V, 1]``: one value channel per head."""
    B, T, H, V = v.shape
    return v.reshape(B, T, H * V, 1)


def split_gate(g: torch.Tensor, V: int) -> torch.Tensor:
    """A gate ``[B, T, H]`` (per head: the same for every channel) or ``[B, T, H, V]``
    -> ``[B, T, H * V]``."""
    if g.dim() == 3:
        g = g.unsqueeze(-1).expand(*g.shape, V)
    B, T, H, _ = g.shape
    return g.reshape(B, T, H * V)


def merge_out(o: torch.Tensor, H: int) -> torch.Tensor:
    """Outputs ``[B, T, H * V, 1]`` -> ``[B, T, H, V]``."""
    B, T, HV, _ = o.shape
    return o.reshape(B, T, H, HV // H)


def split_kv_state(S: torch.Tensor) -> torch.Tensor:
    """A kernel state ``[B, H, K, V]`` (keys by values) -> ``[B, H * V, K, 1]``."""
    B, H, K, V = S.shape
    return S.permute(0, 1, 3, 2).reshape(B, H * V, K, 1)


def merge_kv_state(S: torch.Tensor, H: int) -> torch.Tensor:
    """``[B, H * V, K, 1]`` -> ``[B, H, K, V]``."""
    B, HV, K, _ = S.shape
    return S.reshape(B, H, HV // H, K).permute(0, 1, 3, 2)


def split_weights(W: torch.Tensor) -> torch.Tensor:
    """A layer state ``[B, H, V, K]`` (out by in) -> ``[B, H * V, 1, K]``."""
    B, H, V, K = W.shape
    return W.reshape(B, H * V, 1, K)


def merge_weights(W: torch.Tensor, H: int) -> torch.Tensor:
    """``[B, H * V, 1, K]`` -> ``[B, H, V, K]``."""
    B, HV, _, K = W.shape
    return W.reshape(B, H, HV // H, K)
