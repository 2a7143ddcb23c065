"""The Omega rule's sliding window (Atlas eq. 9): every update fits the last c tokens.

With window ``c`` the objective of token t is ``sum_{i=t-c+1..t} gamma_i l(M; k_i, v_i)``
(``c = 1`` is the usual online objective, ``gamma`` = 1 unless given). Inside a chunk every
gradient is taken at the chunk-start weights, so token t's drive is the gamma-weighted sum of
the rank-one gradients of its window, and the drives of a chunk are a banded mix of the
gradients of C + c - 1 tokens: the chunk and the c - 1 tokens before it. The recurrences of
recurrence.py and muon.py stay as they are; their token coefficients are multiplied by the
band (README eq. W1).

The tokens before the first one of a call come from ``window_prefix`` (the caller carries
them, as it carries the state); missing ones are zero keys with weight 0, which add nothing.

Weights that depend on t (Atlas eq. 9: "γ_i^(t) ∈ [0, 1] are input-dependent"): with
``omega`` [B, T, H, c], token i's weight in the window of token t is
``γ_i^(t) = gamma_i * omega_t[t - i]`` (``t - i = 0..c-1``). ``gamma_i`` still scales token
i's gradient; ``omega`` turns the 0/1 band into a per-token weighted band (:func:`weighted_band`,
README eq. W2). Token t's own ``omega_t`` is all the window needs of t, so a carried prefix
holds (k, v, gamma) as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def extend(
    k: torch.Tensor,
    v: torch.Tensor,
    gamma: torch.Tensor | None,
    window: int,
    prefix: Sequence[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k [B, T, H, d_in], v [B, T, H, d_out], gamma [B, T, H] (None = 1) with the ``window - 1``
    tokens before them prepended: ``[B, window - 1 + T, ...]``, token t at index t + window - 1."""
    B, T, H, _ = k.shape
    gamma = k.new_ones(B, T, H) if gamma is None else gamma
    pre = window - 1
    kp, vp, gp = prefix if prefix is not None else (k[:, :0], v[:, :0], gamma[:, :0])
    missing = pre - kp.shape[1]
    zeros = [x.new_zeros(B, missing, *x.shape[2:]) for x in (k, v, gamma)]
    return tuple(torch.cat([z, p, x], dim=1) for z, p, x in zip(zeros, (kp, vp, gp), (k, v, gamma)))


def band(C: int, window: int, like: torch.Tensor) -> torch.Tensor:
    """[C, C + window - 1]: entry (j, e) = 1 when extended token e is in the window of chunk
    token j (extended index j + window - 1), i.e. ``j <= e <= j + window - 1``."""
    j = torch.arange(C, device=like.device)[:, None]
    e = torch.arange(C + window - 1, device=like.device)[None, :]
    return ((e >= j) & (e <= j + window - 1)).to(like.dtype)


def lag_weights(omega: torch.Tensor, window: int) -> torch.Tensor:
    """omega [..., c] (entry l: the weight of the token l positions back) -> [..., c] ordered
    as the window's tokens t-c+1 .. t (oldest first), the order :func:`extend` gives them."""
    assert omega.shape[-1] == window
    return omega.flip(-1)


def weighted_band(omega: torch.Tensor, window: int) -> torch.Tensor:
    """omega [..., C, c] of one chunk's tokens -> [..., C, C + window - 1]: entry (j, e) =
    ``omega_j[j + window - 1 - e]`` inside the band of :func:`band`, 0 outside (README eq. W2)."""
    C = omega.shape[-2]
    j = torch.arange(C, device=omega.device)[:, None, None]
    e = torch.arange(C + window - 1, device=omega.device)[None, None, :]
    lag = torch.arange(window, device=omega.device)[None, :, None]
    diagonals = (e == j + window - 1 - lag).to(omega.dtype)  # [C, c, C + c - 1], one-hot
    return torch.einsum("...jl,jle->...je", omega, diagonals)
