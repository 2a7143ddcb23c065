"""Deep (MLP) memory, Triton: the adjoints of the forward's pieces, for the backward kernel.

README.md §8 ("Backward kernel"): the reverse of the chunk end (eq. D4), of the dual read
(eq. D2) and of the gate segment products (eq. D1, differentiated without division), dgd's
drives (eq. D5) with the triangular inverse the adjoint reuses, and the write pass's error
through the memory's layer norm (eq. B2). Each takes the upstream
gradient of its outputs and returns those of its inputs; ``triton_backward.py`` chains them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_support import unit_lower_inverse
from .triton_parts import _layer_norm_back


@triton.jit
def _drive_parts(bp, dp, wp, W0, S0, A, E, strict, MOM: tl.constexpr, PREC: tl.constexpr,
                 BT: tl.constexpr):  # fmt: skip
    """dgd's drives (eq. D5) and the inverse ``(I - L)^{-1}`` the backward needs again."""
    L = tl.where(strict, wp * tl.dot(A, tl.trans(A), input_precision=PREC), 0.0)  # [BT, BT]
    rhs = bp[:, None] * tl.dot(A, tl.trans(W0), input_precision=PREC) + E  # [BT, out]
    if MOM:
        rhs += dp[:, None] * tl.dot(A, tl.trans(S0), input_precision=PREC)
    Minv = unit_lower_inverse(-L, BT)  # [BT, BT]
    return tl.dot(Minv, rhs, input_precision=PREC), Minv


@triton.jit
def _dual_bwd(b, d, w, W0, S0, A, X, R, dY, MOM: tl.constexpr, PREC: tl.constexpr):
    """Adjoint of ``Y = b ⊙ R W0^T + d ⊙ R S0^T + ((R A^T) ⊙ w) X`` (eq. D2) for dY [BT, out]:
    returns dR, dW0, dS0, dX, dA, dw [BT, BT], db [BT], dd [BT]."""
    bY = b[:, None] * dY  # [BT, out]
    dR = tl.dot(bY, W0, input_precision=PREC)  # [BT, in]
    dW0 = tl.dot(tl.trans(bY), R, input_precision=PREC)  # [out, in]
    db = tl.sum(dY * tl.dot(R, tl.trans(W0), input_precision=PREC), axis=1)
    if MOM:
        dYd = d[:, None] * dY
        dR += tl.dot(dYd, S0, input_precision=PREC)
        dS0 = tl.dot(tl.trans(dYd), R, input_precision=PREC)
        dd = tl.sum(dY * tl.dot(R, tl.trans(S0), input_precision=PREC), axis=1)
    else:
        dS0 = tl.zeros(W0.shape, tl.float32)
        dd = tl.zeros(b.shape, tl.float32)
    RA = tl.dot(R, tl.trans(A), input_precision=PREC)  # [BT, BT]
    YX = tl.dot(dY, tl.trans(X), input_precision=PREC)  # [BT, BT]
    dR += tl.dot(YX * w, A, input_precision=PREC)
    dX = tl.dot(tl.trans(RA * w), dY, input_precision=PREC)  # [BT, out]
    dA = tl.dot(tl.trans(YX * w), R, input_precision=PREC)  # [BT, in]
    return dR, dW0, dS0, dX, dA, RA * YX, db, dd


@triton.jit
def _end_bwd(GW, GS, W0, S0, A, X, we, swe, MOM: tl.constexpr, PREC: tl.constexpr):
    """Adjoint of the chunk end (eq. D4) for one layer, upstream GW (and GS) [out, in]:
    returns dX, dA, dwe [BT], dswe [BT], dbe, dde, dsbe (scalars)."""
    P = tl.dot(A, tl.trans(GW), input_precision=PREC)  # [BT, out], row t: GW a_t
    dX = we[:, None] * P
    dwe = tl.sum(X * P, axis=1)
    dA = tl.dot(X * we[:, None], GW, input_precision=PREC)  # [BT, in]
    dbe = tl.sum(tl.sum(GW * W0, axis=1), axis=0)
    if MOM:
        PS = tl.dot(A, tl.trans(GS), input_precision=PREC)
        dX += swe[:, None] * PS
        dswe = tl.sum(X * PS, axis=1)
        dA += tl.dot(X * swe[:, None], GS, input_precision=PREC)
        dde = tl.sum(tl.sum(GW * S0, axis=1), axis=0)
        dsbe = tl.sum(tl.sum(GS * S0, axis=1), axis=0)
    else:
        dswe = tl.zeros(we.shape, tl.float32)
        dde = 0.0
        dsbe = 0.0
    return dX, dA, dwe, dswe, dbe, dde, dsbe


@triton.jit
def _segments_bwd(P, dP, dc, cprev, shift, lower, PREC: tl.constexpr):
    """Gradient of the gates r [BT] from those of ``P[t, i] = prod_{i < l <= t} r_l`` and
    ``c_t = prod_{l <= t} r_l`` (no division, so exact at r = 0):
    ``dr_l = sum_t P[t, l] (sum_{i < l} dP[t, i] P[l - 1, i] + dc_t c_{l - 1})``."""
    dP = tl.where(lower, dP, 0.0)
    F = tl.dot(dP, tl.trans(P), input_precision=PREC)  # [t, j] = sum_i dP[t, i] P[j, i]
    G = tl.dot(F, tl.trans(shift), input_precision="ieee")  # [t, l] = F[t, l - 1]
    G += dc[:, None] * cprev[None, :]
    return tl.sum(P * G, axis=0)


@triton.jit
def _norm_error_bwd(dE, E, G, Nk, rho, cols, D: tl.constexpr):
    """Adjoint of the write pass's error through the layer norm (README eq. B2), for the
    upstream dE [BT, BD] of ``E = rho (G - mean G - n mean(G n))`` with ``G = K + n - V`` and
    ``n, rho`` the norm of the layer-2 output z_2 [BT, BD]. Returns dG (the gradient of k and of
    -v) and dz_2: the norm's Jacobian is symmetric, so dG is the same B2 map of dE; n and rho
    get their own parts, and rho's reaches z_2 as ``-rho^2 n / D`` per unit."""
    dG = _layer_norm_back(dE, Nk, rho, cols, D)  # [BT, BD]
    gn = tl.sum(G * Nk, axis=1) / D  # [BT], mean(G n)
    en = tl.sum(dE * Nk, axis=1) / D  # [BT], mean(dE n)
    dN = dG - rho[:, None] * (dE * gn[:, None] + G * en[:, None])  # [BT, BD], G holds n too
    dN = tl.where(cols[None, :], dN, 0.0)
    drho = tl.sum(dE * E, axis=1) / rho  # [BT]
    dZ2 = _layer_norm_back(dN, Nk, rho, cols, D) - (drho * rho * rho / D)[:, None] * Nk
    return dG, dZ2
