"""Public functional API of the matrix-memory kernels.

Conventions follow flash-linear-attention so that code can switch between the two:
q, k are ``[B, T, H, K]``, v is ``[B, T, H, V]``, a matrix state is ``[B, H, K, V]``,
``scale=None`` means ``K ** -0.5`` and every function returns ``(o, final_state)`` with
``final_state=None`` unless ``output_final_state=True``. Each function checks its arguments
and then runs the implementation chosen by :mod:`nestdsl.kernels.dispatch` (``backend=``
forces one for this call). The recurrences are in each op's README.md.
"""

from __future__ import annotations

import torch

from .dispatch import resolve

__all__ = ["delta_rule", "gated_delta_rule", "linear_attention", "softmax_attention"]


def _check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{op}: q, k, v must be 4-d [B, T, H, D], got {q.dim()}, {k.dim()}, {v.dim()}"
        )
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{op}: v must be [B, T, H, V] = {tuple(q.shape[:3])} + [V], got {tuple(v.shape)}"
        )
    if q.shape[1] < 1:
        raise ValueError(f"{op}: need at least one token, got T = {q.shape[1]}")
    if not q.is_floating_point() or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"{op}: q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )


def _check_tensor(
    op: str, name: str, x: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise ValueError(f"{op}: {name} must have dtype {dtype}, got {x.dtype}")


def _check_chunk_size(op: str, chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be an int >= 1, got {chunk_size!r}")


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear attention: ``S_t = S_{t-1} + k_t v_t^T``, ``o_t = scale * S_t^T q_t``.

    q, k: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V].
    Returns o [B, T, H, V] and the final state [B, H, K, V] (None unless requested).
    """
    op = "linear_attention"
    _check_qkv(op, q, k, v)
    B, _, H, K = q.shape
    if initial_state is not None:
        _check_tensor(op, "initial_state", initial_state, (B, H, K, v.shape[-1]), q.dtype)
    _check_chunk_size(op, chunk_size)
    fn = resolve(op, q.device, backend)
    return fn(
        q,
        k,
        v,
        scale=_scale(q, scale),
        initial_state=initial_state,
        output_final_state=output_final_state,
        chunk_size=chunk_size,
    )


def gated_delta_rule(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule. Per token: ``S <- exp(g_t) S``;
    ``S <- S + beta_t k_t (v_t - S^T k_t)^T``; ``o_t = scale * S^T q_t``.

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; g: [B, T, H] log decay (<= 0),
    ``None`` for no decay; initial_state: [B, H, K, V].
    Returns o [B, T, H, V] and the final state [B, H, K, V] (None unless requested).
    """
    op = "gated_delta_rule"
    _check_qkv(op, q, k, v)
    B, T, H, K = q.shape
    _check_tensor(op, "beta", beta, (B, T, H), q.dtype)
    if g is not None:
        _check_tensor(op, "g", g, (B, T, H), q.dtype)
    if initial_state is not None:
        _check_tensor(op, "initial_state", initial_state, (B, H, K, v.shape[-1]), q.dtype)
    _check_chunk_size(op, chunk_size)
    fn = resolve(op, q.device, backend)
    return fn(
        q,
        k,
        v,
        beta,
        g,
        scale=_scale(q, scale),
        initial_state=initial_state,
        output_final_state=output_final_state,
        chunk_size=chunk_size,
    )


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Delta rule: :func:`gated_delta_rule` without decay (``g=None``)."""
    return gated_delta_rule(
        q,
        k,
        v,
        beta,
        None,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        chunk_size=chunk_size,
        backend=backend,
    )


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    sinks: int = 0,
    initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    output_final_state: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Causal softmax attention read as a cache memory.

    The token at global position p attends to positions ``p - window + 1 .. p`` (all of
    ``0 .. p`` when ``window is None``). The state is the cache ``(k_cache [B, Tc, H, K],
    v_cache [B, Tc, H, V])`` of the positions just before q's first token; the returned cache
    holds the last ``window - 1`` positions (all of them without a window), so feeding a
    sequence in pieces while carrying the cache equals one call on the whole sequence.
    ``sinks`` first positions of the sequence stay visible to every query under a window
    (attention sinks; Titans's SW-Attn* with its persistent tokens); the cache then keeps them
    in front of the last ``window - 1`` positions.
    """
    op = "softmax_attention"
    _check_qkv(op, q, k, v)
    B, _, H, K = q.shape
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ValueError(f"{op}: window must be None or an int >= 1, got {window!r}")
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"{op}: sinks must be an int >= 0, got {sinks!r}")
    if initial_state is not None:
        k_cache, v_cache = initial_state
        Tc = k_cache.shape[1] if k_cache.dim() == 4 else -1
        _check_tensor(op, "k_cache", k_cache, (B, Tc, H, K), q.dtype)
        _check_tensor(op, "v_cache", v_cache, (B, Tc, H, v.shape[-1]), q.dtype)
    fn = resolve(op, q.device, backend)
    return fn(
        q,
        k,
        v,
        scale=_scale(q, scale),
        window=window,
        sinks=sinks,
        initial_state=initial_state,
        output_final_state=output_final_state,
    )
