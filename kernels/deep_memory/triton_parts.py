"""Deep (MLP) memory, Triton: the on-chip pieces both fused kernels share.

README.md §8. The activation and its first two derivatives (structure.py's, written out for
Triton), the segment products of eq. D1 and their row helpers, dgd's proximal step (NL eq. 57)
and each layer's coefficient rows, and the dual read of eq. D2. ``triton.py`` (forward) and
``triton_backward.py`` (the reverse chunk walk, which recomputes the forward with these same
functions, so the two cannot disagree) import them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _act(z, ACT: tl.constexpr):
    """The activation s(z), indexed as ``ACTIVATIONS`` (gelu is the exact erf form)."""
    if ACT == 0:
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACT == 1:
        return z * tl.sigmoid(z)
    elif ACT == 2:
        return tl.maximum(z, 0.0)
    elif ACT == 3:
        return 2.0 * tl.sigmoid(2.0 * z) - 1.0  # tanh
    else:
        return z


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    """s'(z) written out, as structure.activation_grad."""
    if ACT == 0:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        return cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == 1:
        sig = tl.sigmoid(z)
        return sig * (1.0 + z * (1.0 - sig))
    elif ACT == 2:
        return (z > 0.0).to(tl.float32)
    elif ACT == 3:
        t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        return 1.0 - t * t
    else:
        return tl.full(z.shape, 1.0, tl.float32)


@triton.jit
def _segments(r, BT: tl.constexpr):
    """``P[t, i] = prod_{i < l <= t} r_l`` (1 on the diagonal, 0 above) and ``c[t] = prod_{l <= t}
    r_l`` for one chunk's gates r [BT] (README eq. D1's segment products, by cumprod: a zero
    gate gives exact zeros)."""
    idx = tl.arange(0, BT)
    factors = tl.where(idx[None, :] > idx[:, None], r[None, :], 1.0)  # [BT (i), BT (l)]
    upto = tl.cumprod(factors, axis=1)  # [i, t] = prod_{i < l <= t} r_l for t >= i
    P = tl.where(idx[:, None] >= idx[None, :], tl.trans(upto), 0.0)  # [BT (t), BT (i)]
    return P, tl.cumprod(r, axis=0)


@triton.jit
def _prev(x, idx, first):
    """Row t - 1 of a per-row vector x [BT] (``first`` at t = 0): the weights before token t."""
    sel = idx[None, :] == idx[:, None] - 1  # [BT (t), BT (s)], s = t - 1
    return tl.sum(tl.where(sel, x[None, :], 0.0), axis=1) + tl.where(idx == 0, first, 0.0)


@triton.jit
def _chunk_inputs(q, k, v, theta, alpha, i_b, i_h, n, idx, jd, T, H, D, C):
    """Chunk n's rows for head i_h of batch i_b: Q, K, V [BT, BD] and the step th and keep
    factor r = 1 - alpha [BT], in float32; tokens past the chunk or past T read as theta = 0,
    alpha = 0 (no write, no decay). Also the token mask mt [BT], the rows of the [B, T, H, ...]
    layouts and the [BT, BD] offsets pd with their mask mtd, for the caller's own loads (eta,
    upstream gradients) and stores."""
    t = n * C + idx  # [BT] token positions
    mt = (idx < C) & (t < T)
    row = i_b.to(tl.int64) * T + t  # [BT], (b, t) row of the [B, T, H, ...] layouts
    pd = (row * H + i_h)[:, None] * D + jd[None, :]  # [BT, BD]
    mtd = mt[:, None] & (jd < D)[None, :]
    Q = tl.load(q + pd, mask=mtd, other=0.0).to(tl.float32)  # [BT, BD]
    K = tl.load(k + pd, mask=mtd, other=0.0).to(tl.float32)
    V = tl.load(v + pd, mask=mtd, other=0.0).to(tl.float32)
    th = tl.load(theta + row * H + i_h, mask=mt, other=0.0).to(tl.float32)  # [BT]
    r = 1.0 - tl.load(alpha + row * H + i_h, mask=mt, other=0.0).to(tl.float32)
    return Q, K, V, th, r, mt, row, pd, mtd


@triton.jit
def _row(x, idx, i):
    """Row i of x [BT, M], as [M]."""
    return tl.sum(tl.where(idx[:, None] == i, x, 0.0), axis=0)


@triton.jit
def _entry(x, idx, i):
    """Entry i of x [BT], as a scalar."""
    return tl.sum(tl.where(idx == i, x, 0.0), axis=0)


@triton.jit
def _proximal(th, A):
    """dgd's proximal step per token, ``theta_t / (1 + theta_t ||a_t||^2)`` (NL eq. 57; README
    eq. D6) for one layer's inputs A [BT, width]; padded rows have theta = 0 and stay 0."""
    return th / (1.0 + th * tl.sum(A * A, axis=1))


@triton.jit
def _steps(th, Mw, Pe, lower, shift):
    """One layer's rows of eq. D1 for the step ``th`` [BT]: ``w`` (weights, causal), ``sw``
    (momentum) and ``wp`` (row t - 1 of w, by an exact shift matmul)."""
    w = tl.where(lower, -th[None, :] * Mw, 0.0)  # [BT, BT]
    sw = -th[None, :] * Pe  # [BT, BT]
    wp = tl.dot(shift, w, input_precision="ieee")  # [BT, BT]
    return w, sw, wp


@triton.jit
def _dual(b, d, w, W0, S0, A, X, R, MOM: tl.constexpr, PREC: tl.constexpr):
    """Per-token ``W_t r_t`` (eq. D2): ``b ⊙ R W0^T + d ⊙ R S0^T + ((R A^T) ⊙ w) X``."""
    z = b[:, None] * tl.dot(R, tl.trans(W0), input_precision=PREC)  # [BT, out]
    if MOM:
        z += d[:, None] * tl.dot(R, tl.trans(S0), input_precision=PREC)
    scores = tl.dot(R, tl.trans(A), input_precision=PREC) * w  # [BT, BT], causal via w
    return z + tl.dot(scores, X, input_precision=PREC)


@triton.jit
def _act_grad2(z, ACT: tl.constexpr):
    """s''(z), indexed as ``ACTIVATIONS`` (the write pass's delta_1 holds s'(z))."""
    if ACT == 0:
        return tl.exp(-0.5 * z * z) * 0.3989422804014327 * (2.0 - z * z)  # gelu
    elif ACT == 1:
        sig = tl.sigmoid(z)
        return sig * (1.0 - sig) * (2.0 + z * (1.0 - 2.0 * sig))  # silu
    elif ACT == 3:
        t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        return -2.0 * t * (1.0 - t * t)  # tanh
    else:
        return tl.zeros(z.shape, tl.float32)  # relu, identity


@triton.jit
def _layer_norm(y, cols, D: tl.constexpr, EPS: tl.constexpr):
    """The memory's non-affine layer norm per token row of y [BT, BD] over its D real features
    (``cols`` [BD] masks the padding, which stays 0): ``n = (y - mean y) rho`` and
    ``rho = (var y + eps)^(-1/2)`` [BT] (structure.py, README eq. B2)."""
    mu = tl.sum(y, axis=1) / D  # [BT]; padded features are 0, so they add nothing
    c = tl.where(cols[None, :], y - mu[:, None], 0.0)  # [BT, BD]
    rho = 1.0 / tl.sqrt(tl.sum(c * c, axis=1) / D + EPS)  # [BT]
    return c * rho[:, None], rho


@triton.jit
def _layer_norm_back(g, n, rho, cols, D: tl.constexpr):
    """The error through the layer norm (README eq. B2): ``rho (g - mean(g) - n mean(g n))`` per
    token row for g = dl/dn [BT, BD]; zero on the padded features."""
    gm = tl.sum(g, axis=1) / D  # [BT]
    gn = tl.sum(g * n, axis=1) / D  # [BT]
    return tl.where(cols[None, :], rho[:, None] * (g - gm[:, None] - n * gn[:, None]), 0.0)


@triton.jit
def _anchor_term(bp, A, AN, PREC: tl.constexpr):
    """``(1 - b_{t-1}) A_in AN^T``: what an anchored state adds to ``W_{t-1} a_t`` (dgd's drive)."""
    return (1.0 - bp)[:, None] * tl.dot(A, tl.trans(AN), input_precision=PREC)
