"""Titans linear memory with momentum, Triton form: fused chunk kernels, forward and backward.

Titans §3.2 eqs. (9)-(15), the dual form of README.md eq. (4)-(6). The gate coefficients
``b, d, w`` (and the momentum's ``s_b, s_w``) are O(T C) elementwise work and stay in torch
(:func:`nestdsl.kernels.deep_memory.recurrence.chunk_coefficients`, differentiated by autograd);
the kernels do the O(T C (K + V) + T K V) part. One program per (value tile, batch x head) walks
the chunks with the memory ``M`` and momentum ``S`` tiles ``[K, BV]`` in registers:

    E  = K M - V                                         (errors at the chunk-start weights)
    O  = scale (b ⊙ Q M + d ⊙ Q S + ((Q K^T) ⊙ w) E)
    M <- b_R M + d_R S + K^T (w_R ⊙ E),     S <- s_bR S + K^T (s_wR ⊙ E)

(``_R``: the coefficient row of the chunk's last real token). Unlike the matrix memories the
chunk size is part of the function (gradients at chunk starts), so one chunk is one tile of
``block(C)`` rows. The backward kernel walks the chunks in reverse from the saved chunk-start
states, carries ``dM, dS`` and returns the gradients of the coefficients too; value columns
are independent, so V is split across programs and the per-tile parts are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import triton_support as ts
from ..deep_memory.recurrence import chunk_coefficients
from .chunk import titans_linear_chunk

# Largest chunk one tile holds (the [C, C] score and coefficient blocks live in registers).
MAX_CHUNK = 64
# Shared-memory budget of the backward kernel, as (key block) x (chunk block): offline ptxas for
# sm_90 (bf16, tf32 products, 8 warps) gave 154 KB at 64 x 64 with 32-column value tiles, but
# 250 KB at 128 x 64 (over the 227 KB a block may use), and 146 KB at 128 x 16 with 64 columns
# (75 KB with 32). Beyond TILE_BUDGET the chunk form runs; above 1024 the value tile is 32.
TILE_BUDGET = 64 * 64


def _tiles(K: int, V: int, C: int) -> tuple[int, int, int]:
    """(BC, BK, BV) for chunk C and head sizes K, V."""
    BC, BK = ts.block(C), ts.block(K)
    BV = ts.value_block(V) if BK * BC <= 1024 else min(32, ts.value_block(V))
    return BC, BK, BV


@triton.jit
def _load(q, k, v, n, i_b, i_h, i_v, T, C, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
          BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):  # fmt: skip
    """Chunk n's q, k [BC, BK] and v [BC, BV] (zero past the chunk and past T)."""
    c = tl.arange(0, BC)
    t = n * C + c
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mt = (c < C) & (t < T)
    row = (i_b.to(tl.int64) * T + t) * H + i_h  # [BC]
    pk, pv = row[:, None] * K + ik[None, :], row[:, None] * V + iv[None, :]
    mk, mv = mt[:, None] & (ik < K)[None, :], mt[:, None] & (iv < V)[None, :]
    qc = tl.load(q + pk, mask=mk, other=0.0).to(tl.float32)
    kc = tl.load(k + pk, mask=mk, other=0.0).to(tl.float32)
    vc = tl.load(v + pv, mask=mv, other=0.0).to(tl.float32)
    return qc, kc, vc, pk, pv, mk, mv


@triton.jit
def _coef(bq, dq, w, bR, dR, sbR, wR, swR, bhn, C, BC: tl.constexpr):
    """Chunk bhn's coefficients: read rows [BC] and [BC, BC], last-row scalars and rows."""
    c = tl.arange(0, BC)
    mc = c < C
    pc = bhn * C + c
    b_r = tl.load(bq + pc, mask=mc, other=0.0)
    d_r = tl.load(dq + pc, mask=mc, other=0.0)
    w_m = tl.load(w + bhn * C * C + c[:, None] * C + c[None, :], mask=mc[:, None] & mc[None, :],
                  other=0.0)  # fmt: skip
    return (b_r, d_r, w_m, tl.load(bR + bhn), tl.load(dR + bhn), tl.load(sbR + bhn),
            tl.load(wR + pc, mask=mc, other=0.0),
            tl.load(swR + pc, mask=mc, other=0.0))  # fmt: skip


@triton.jit
def _fwd_kernel(q, k, v, bq, dq, w, bR, dR, sbR, wR, swR, m0, s0, o, hm, hs, mt_, st_, T, N, C,
                scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BC: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, USE_M0: tl.constexpr, USE_S0: tl.constexpr,
                SAVE_H: tl.constexpr, STORE_FINAL: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bh = i_bh.to(tl.int64)
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    ps = ik[:, None] * V + iv[None, :]  # [BK, BV]
    ms = (ik < K)[:, None] & (iv < V)[None, :]
    if USE_M0:
        M = tl.load(m0 + bh * K * V + ps, mask=ms, other=0.0).to(tl.float32)  # [BK, BV]
    else:
        M = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_S0:
        S = tl.load(s0 + bh * K * V + ps, mask=ms, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    for n in range(0, N):
        if SAVE_H:
            tl.store(hm + (bh * N + n) * K * V + ps, M, mask=ms)
            tl.store(hs + (bh * N + n) * K * V + ps, S, mask=ms)
        qc, kc, vc, pk, pv, mk, mv = _load(q, k, v, n, i_b, i_h, i_v, T, C, H, K, V, BC, BK, BV)
        b_r, d_r, w_m, b_R, d_R, sb_R, w_R, sw_R = _coef(
            bq, dq, w, bR, dR, sbR, wR, swR, bh * N + n, C, BC)  # fmt: skip
        E = tl.dot(kc, M, input_precision=PREC) - vc  # [BC, BV]
        A = tl.dot(qc, tl.trans(kc), input_precision=PREC) * w_m  # [BC, BC]
        out = b_r[:, None] * tl.dot(qc, M, input_precision=PREC)
        out += d_r[:, None] * tl.dot(qc, S, input_precision=PREC)
        out += tl.dot(A, E, input_precision=PREC)
        tl.store(o + pv, (out * scale).to(o.dtype.element_ty), mask=mv)
        kT = tl.trans(kc)  # [BK, BC]
        M_next = b_R * M + d_R * S + tl.dot(kT, w_R[:, None] * E, input_precision=PREC)
        S = sb_R * S + tl.dot(kT, sw_R[:, None] * E, input_precision=PREC)
        M = M_next
    if STORE_FINAL:
        tl.store(mt_ + bh * K * V + ps, M, mask=ms)
        tl.store(st_ + bh * K * V + ps, S, mask=ms)


@triton.jit
def _bwd_kernel(q, k, v, bq, dq, w, bR, dR, sbR, wR, swR, hm, hs, do, dmt, dst, gq, gk, gv,
                gbq, gdq, gw, gbR, gdR, gsbR, gwR, gswR, gm0, gs0, T, N, C, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BC: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, USE_DMT: tl.constexpr, USE_DST: tl.constexpr,
                PREC: tl.constexpr):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bh = i_bh.to(tl.int64)
    BH = tl.num_programs(1)
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    ps = ik[:, None] * V + iv[None, :]
    ms = (ik < K)[:, None] & (iv < V)[None, :]
    c = tl.arange(0, BC)
    mc = c < C
    if USE_DMT:
        dM = tl.load(dmt + bh * K * V + ps, mask=ms, other=0.0)  # [BK, BV]
    else:
        dM = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DST:
        dS = tl.load(dst + bh * K * V + ps, mask=ms, other=0.0)
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
    # Value-tile partial sums live at tile offset i_v of [NV, ...] buffers.
    part_tok = i_v.to(tl.int64) * (BH // H) * T * H * K
    part_c = i_v.to(tl.int64) * BH * N * C  # [NV, BH, N, C]
    for m in range(0, N):
        n = N - 1 - m
        bhn = bh * N + n
        M = tl.load(hm + bhn * K * V + ps, mask=ms, other=0.0)
        S = tl.load(hs + bhn * K * V + ps, mask=ms, other=0.0)
        qc, kc, vc, pk, pv, mk, mv = _load(q, k, v, n, i_b, i_h, i_v, T, C, H, K, V, BC, BK, BV)
        b_r, d_r, w_m, b_R, d_R, sb_R, w_R, sw_R = _coef(
            bq, dq, w, bR, dR, sbR, wR, swR, bhn, C, BC)  # fmt: skip
        dO = tl.load(do + pv, mask=mv, other=0.0).to(tl.float32) * scale  # [BC, BV]
        E = tl.dot(kc, M, input_precision=PREC) - vc
        QK = tl.dot(qc, tl.trans(kc), input_precision=PREC)  # [BC, BC]
        QM = tl.dot(qc, M, input_precision=PREC)
        QS = tl.dot(qc, S, input_precision=PREC)
        KdM = tl.dot(kc, dM, input_precision=PREC)  # [BC, BV]
        KdS = tl.dot(kc, dS, input_precision=PREC)
        dE = tl.dot(tl.trans(QK * w_m), dO, input_precision=PREC)
        dE += w_R[:, None] * KdM + sw_R[:, None] * KdS  # [BC, BV]
        dA = tl.dot(dO, tl.trans(E), input_precision=PREC)  # [BC, BC], d(QK ⊙ w)
        dAw = dA * w_m
        g_q = b_r[:, None] * tl.dot(dO, tl.trans(M), input_precision=PREC)
        g_q += d_r[:, None] * tl.dot(dO, tl.trans(S), input_precision=PREC)
        g_q += tl.dot(dAw, kc, input_precision=PREC)  # [BC, BK]
        g_k = tl.dot(tl.trans(dAw), qc, input_precision=PREC)
        g_k += tl.dot(dE, tl.trans(M), input_precision=PREC)
        g_k += tl.dot(w_R[:, None] * E, tl.trans(dM), input_precision=PREC)
        g_k += tl.dot(sw_R[:, None] * E, tl.trans(dS), input_precision=PREC)
        tl.store(gq + part_tok + pk, g_q, mask=mk)
        tl.store(gk + part_tok + pk, g_k, mask=mk)
        tl.store(gv + pv, (-dE).to(gv.dtype.element_ty), mask=mv)
        pc = part_c + bhn * C + c
        tl.store(gbq + pc, tl.sum(dO * QM, axis=1), mask=mc)
        tl.store(gdq + pc, tl.sum(dO * QS, axis=1), mask=mc)
        tl.store(gwR + pc, tl.sum(KdM * E, axis=1), mask=mc)
        tl.store(gswR + pc, tl.sum(KdS * E, axis=1), mask=mc)
        pw = (part_c + bhn * C) * C + c[:, None] * C + c[None, :]
        tl.store(gw + pw, dA * QK, mask=mc[:, None] & mc[None, :])
        ps1 = i_v.to(tl.int64) * BH * N + bhn
        tl.store(gbR + ps1, tl.sum(tl.sum(dM * M, axis=1), axis=0))
        tl.store(gdR + ps1, tl.sum(tl.sum(dM * S, axis=1), axis=0))
        tl.store(gsbR + ps1, tl.sum(tl.sum(dS * S, axis=1), axis=0))
        dM_prev = tl.dot(tl.trans(qc), b_r[:, None] * dO, input_precision=PREC)
        dM_prev += b_R * dM + tl.dot(tl.trans(kc), dE, input_precision=PREC)
        dS = tl.dot(tl.trans(qc), d_r[:, None] * dO, input_precision=PREC) + d_R * dM + sb_R * dS
        dM = dM_prev
    tl.store(gm0 + bh * K * V + ps, dM, mask=ms)
    tl.store(gs0 + bh * K * V + ps, dS, mask=ms)


class _TitansLinear(torch.autograd.Function):
    """The kernels as a function of q, k, v, the eight coefficient tensors and the states."""

    @staticmethod
    def forward(ctx, q, k, v, m0, s0, scale, C, output_final_state, *coef_tensors):
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = triton.cdiv(T, C)
        BC, BK, BV = _tiles(K, V, C)
        NV = triton.cdiv(V, BV)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        dev, f32 = q.device, torch.float32
        o = ts.new_output((B, T, H, V), q.dtype, dev)
        save = any(ctx.needs_input_grad)
        hm = ts.new_output((B, H, N, K, V), f32, dev) if save else o
        hs = ts.new_output((B, H, N, K, V), f32, dev) if save else o
        mT = ts.new_output((B, H, K, V), f32, dev) if output_final_state else o
        sT = ts.new_output((B, H, K, V), f32, dev) if output_final_state else o
        _fwd_kernel[(NV, B * H)](
            q, k, v, *coef_tensors, q if m0 is None else m0.contiguous(),
            q if s0 is None else s0.contiguous(), o, hm, hs, mT, sT, T, N, C, scale, H=H, K=K,
            V=V, BC=BC, BK=BK, BV=BV, USE_M0=m0 is not None, USE_S0=s0 is not None,
            SAVE_H=save, STORE_FINAL=output_final_state,
            PREC=ts.dot_precision(q.dtype, _fwd_kernel), num_warps=ts.num_warps(BK, BV),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, *coef_tensors, hm if save else None, hs if save else None)
        ctx.meta = (scale, C, m0 is not None, s0 is not None)
        if not output_final_state:
            return o, None, None
        return o, mT.to(q.dtype), sT.to(q.dtype)

    @staticmethod
    def backward(ctx, do, dmT, dsT):
        q, k, v, *coef_tensors, hm, hs = ctx.saved_tensors
        scale, C, has_m0, has_s0 = ctx.meta
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = triton.cdiv(T, C)
        BC, BK, BV = _tiles(K, V, C)
        NV = triton.cdiv(V, BV)
        dev, f32, BH = q.device, torch.float32, B * H

        def new(*shape, dtype=f32):
            return ts.new_output(shape, dtype, dev)

        gq, gk, gv = new(NV, B, T, H, K), new(NV, B, T, H, K), new(B, T, H, V, dtype=q.dtype)
        gbq, gdq, gwR, gswR = (new(NV, BH, N, C) for _ in range(4))
        gw = new(NV, BH, N, C, C)
        gbR, gdR, gsbR = (new(NV, BH, N) for _ in range(3))
        gm0, gs0 = new(B, H, K, V), new(B, H, K, V)
        _bwd_kernel[(NV, BH)](
            q, k, v, *coef_tensors, hm, hs, do.contiguous(),
            do if dmT is None else dmT.contiguous().float(),
            do if dsT is None else dsT.contiguous().float(), gq, gk, gv, gbq, gdq, gw, gbR,
            gdR, gsbR, gwR, gswR, gm0, gs0, T, N, C, scale, H=H, K=K, V=V, BC=BC, BK=BK, BV=BV,
            USE_DMT=dmT is not None, USE_DST=dsT is not None,
            PREC=ts.dot_precision(q.dtype, _fwd_kernel), num_warps=ts.num_warps(BK, BV),
        )  # fmt: skip
        dt = q.dtype
        coef_grads = [g.sum(0) for g in (gbq, gdq, gw, gbR, gdR, gsbR, gwR, gswR)]
        return (
            gq.sum(0).to(dt), gk.sum(0).to(dt), gv,
            gm0.to(dt) if has_m0 else None, gs0.to(dt) if has_s0 else None, None, None, None,
            *coef_grads,
        )  # fmt: skip


def _coefficients(theta, eta, alpha, C: int):
    """The eight coefficient tensors of the kernels, [B*H, N, ...] float32 (torch, autograd).

    Gates are padded with theta = 0, eta = 1, alpha = 0 as in chunk.py; the "last row" of the
    final chunk is that of its last real token (README.md §2, Padding).
    """
    B, T, H = theta.shape
    N = -(-T // C)
    pad = N * C - T

    def chunked(x, fill):  # [B, T, H] -> [B, H, N, C] float32
        return F.pad(x.float(), (0, 0, 0, pad), value=fill).transpose(1, 2).reshape(B, H, N, C)

    coef = chunk_coefficients(chunked(theta, 0.0), chunked(eta, 1.0), chunked(alpha, 0.0),
                              "momentum")  # fmt: skip
    rows = torch.full((N,), C, device=theta.device)
    rows[-1] = C - pad
    n = torch.arange(N, device=theta.device)

    def flat(x):
        return x.reshape(B * H, *x.shape[2:]).contiguous()

    return [
        flat(coef.b[..., 1:]), flat(coef.d[..., 1:]), flat(coef.w[..., 1:, :]),
        flat(coef.b[:, :, n, rows]), flat(coef.d[:, :, n, rows]), flat(coef.s_b[:, :, n, rows]),
        flat(coef.w[:, :, n, rows, :]), flat(coef.s_w[:, :, n, rows, :]),
    ]  # fmt: skip


def titans_linear_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    *,
    chunk_size: int = 16,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    initial_momentum: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Triton form of the Titans linear memory; same contract as :func:`titans_linear_chunk`,
    differentiable w.r.t. every input and both initial states.

    q, k: [B, T, H, K]; v: [B, T, H, V]; theta, eta, alpha: [B, T, H]; initial_state (M),
    initial_momentum (S): [B, H, K, V]. Returns o [B, T, H, V] and ``(M_T, S_T)`` (or None).
    float64 inputs, chunks over 64 tokens and chunk x key tiles over ``TILE_BUDGET`` (64 x 64,
    i.e. C <= 32 for K = 128) run :func:`titans_linear_chunk`.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    too_big = chunk_size > MAX_CHUNK or ts.block(chunk_size) * ts.block(q.shape[-1]) > TILE_BUDGET
    if ts.fallback_reason(q.dtype, q.shape[-1]) is not None or too_big:
        return titans_linear_chunk(
            q, k, v, theta, eta, alpha, chunk_size=chunk_size, scale=scale,
            initial_state=initial_state, initial_momentum=initial_momentum,
            output_final_state=output_final_state,
        )  # fmt: skip
    ts.check_launch("titans_linear", _fwd_kernel, q, k, v, theta, initial_state, initial_momentum)
    coefs = _coefficients(theta, eta, alpha, chunk_size)
    o, M, S = _TitansLinear.apply(
        q, k, v, initial_state, initial_momentum, scale, chunk_size, output_final_state,
        *coefs,
    )  # fmt: skip
    return o, ((M, S) if output_final_state else None)
