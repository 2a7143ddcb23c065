"""Gated delta rule, Triton form: fused chunk kernels, forward and backward.

The chunk recurrence of README.md eq. (12) (Yang et al., NeurIPS 2024, with the decay of Gated
DeltaNet, Yang, Kautz & Hatamizadeh, ICLR 2025), one program per (value tile, batch x head)
walking the chunks in order with the state tile ``S [K, BV]`` in registers. Per chunk of BT
tokens, with ``G`` the in-chunk cumulative log decay and ``Gam[t, i] = exp(G_t - G_i)``:

    A = strict_lower(diag(b) (K K^T ⊙ Gam)),   Tinv = (I + A)^{-1}     (UT transform, eq. 7)
    U = Tinv (diag(b) V - diag(b e^G) K S)                                (the chunk's new values)
    O = scale (diag(e^G) Q S + ((Q K^T) ⊙ Gam) U)
    S <- e^{G_C} S + (diag(e^{G_C - G}) K)^T U

The value columns of the state evolve independently, so V is split across programs; the
per-tile contributions to the gradients of q, k, beta and g are summed afterwards. The
backward kernel walks the chunks in reverse from the chunk-start states saved by the forward
(``[B, H, N, K, V]``, float32), recomputes the chunk's A, Tinv and U, and carries dS (README.md,
"Triton" section, has the gradient formulas). ``g=None`` compiles the plain delta rule.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import triton_support as ts
from ..triton_support import unit_lower_inverse
from .chunk import gated_delta_rule_chunk


@triton.jit
def _load_chunk(q, k, v, beta, g, n, i_b, i_h, i_v, T, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                USE_G: tl.constexpr):  # fmt: skip
    """Chunk n's operands (zero past T, so padding writes and decays nothing) and its decays."""
    t = n * BT + tl.arange(0, BT)  # [BT] token positions
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mt, mk, mv = t < T, ik < K, iv < V
    row = i_b.to(tl.int64) * T + t  # [BT], (b, t) row of the [B, T, H, ...] layouts
    pk = (row * H + i_h)[:, None] * K + ik[None, :]  # [BT, BK]
    pv = (row * H + i_h)[:, None] * V + iv[None, :]  # [BT, BV]
    qc = tl.load(q + pk, mask=mt[:, None] & mk[None, :], other=0.0).to(tl.float32)
    kc = tl.load(k + pk, mask=mt[:, None] & mk[None, :], other=0.0).to(tl.float32)
    vc = tl.load(v + pv, mask=mt[:, None] & mv[None, :], other=0.0).to(tl.float32)
    bc = tl.load(beta + row * H + i_h, mask=mt, other=0.0).to(tl.float32)  # [BT]
    r = tl.arange(0, BT)
    lower = r[:, None] >= r[None, :]  # [BT, BT], (i <= t)
    if USE_G:
        gc = tl.load(g + row * H + i_h, mask=mt, other=0.0).to(tl.float32)  # [BT]
        G = tl.cumsum(gc, axis=0)  # [BT], log decay since the chunk start
        GC = tl.sum(gc, axis=0)  # scalar, the chunk's total log decay
        # seg[t, i] = sum_{i < s <= t} g_s, summed directly (one [BT, BT] product, always
        # IEEE) rather than as G_t - G_i: that difference cancels once |G| is large (README.md,
        # "Numerics"). Every entry is a sum of g <= 0, so no exp below overflows.
        g_after = tl.where(r[:, None] > r[None, :], gc[:, None], 0.0)  # [BT(s), BT(i)], s > i
        seg = tl.dot(lower.to(tl.float32), g_after, input_precision="ieee")  # [BT, BT]
        gam_m = tl.where(lower, tl.exp(seg), 0.0)  # [BT, BT]
        gam = tl.exp(G)  # [BT]
        kdec = tl.exp(tl.sum(tl.where(r[:, None] == BT - 1, seg, 0.0), axis=0))  # [BT], G_C - G_i
    else:
        gam_m = lower.to(tl.float32)
        gam = tl.full([BT], 1.0, tl.float32)
        kdec = tl.full([BT], 1.0, tl.float32)
        GC = 0.0
    return qc, kc, vc, bc, gam_m, gam, kdec, GC, pk, pv, mt, mk, mv, row


@triton.jit
def _fwd_kernel(q, k, v, beta, g, h0, o, h, ht, T, N, scale, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                USE_G: tl.constexpr, USE_H0: tl.constexpr, SAVE_H: tl.constexpr,
                STORE_HT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    ps = ik[:, None] * V + iv[None, :]  # [BK, BV] offsets inside one state
    ms = (ik < K)[:, None] & (iv < V)[None, :]
    bh = i_bh.to(tl.int64)
    r = tl.arange(0, BT)
    strict = r[:, None] > r[None, :]
    if USE_H0:
        S = tl.load(h0 + bh * K * V + ps, mask=ms, other=0.0).to(tl.float32)  # [BK, BV]
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    for n in range(0, N):
        if SAVE_H:  # chunk-start states, read back by the backward kernel
            tl.store(h + (bh * N + n) * K * V + ps, S, mask=ms)
        qc, kc, vc, bc, gam_m, gam, kdec, GC, pk, pv, mt, mk, mv, row = _load_chunk(
            q, k, v, beta, g, n, i_b, i_h, i_v, T, H, K, V, BT, BK, BV, USE_G)  # fmt: skip
        kk = tl.dot(kc, tl.trans(kc), input_precision=PREC)  # [BT, BT]
        A = tl.where(strict, kk * gam_m * bc[:, None], 0.0)
        Tinv = unit_lower_inverse(A, BT)  # [BT, BT]
        kb = kc * (bc * gam)[:, None]  # [BT, BK]
        R = vc * bc[:, None] - tl.dot(kb, S, input_precision=PREC)  # [BT, BV]
        U = tl.dot(Tinv, R, input_precision=PREC)  # [BT, BV]
        P = tl.dot(qc, tl.trans(kc), input_precision=PREC) * gam_m * scale  # [BT, BT]
        out = tl.dot(qc * (gam * scale)[:, None], S, input_precision=PREC)
        out += tl.dot(P, U, input_precision=PREC)  # [BT, BV]
        tl.store(o + pv, out.to(o.dtype.element_ty), mask=mt[:, None] & mv[None, :])
        kt = kc * kdec[:, None]  # [BT, BK]
        if USE_G:  # (a plain float GC = 0 never reaches tl.exp)
            S = S * tl.exp(GC)
        S += tl.dot(tl.trans(kt), U, input_precision=PREC)
    if STORE_HT:
        tl.store(ht + bh * K * V + ps, S, mask=ms)


@triton.jit
def _bwd_kernel(q, k, v, beta, g, h, do, dht, dq, dk, dv, db, dg, dh0, T, N, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                USE_H0: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    ps = ik[:, None] * V + iv[None, :]  # [BK, BV]
    ms = (ik < K)[:, None] & (iv < V)[None, :]
    r = tl.arange(0, BT)
    strict = r[:, None] > r[None, :]
    if USE_DHT:
        dS = tl.load(dht + i_bh.to(tl.int64) * K * V + ps, mask=ms, other=0.0)  # [BK, BV]
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
    # Per value tile partial sums: [NV, B, T, H, ...] with tile i_v at offset i_v * B*T*H*...
    B = tl.num_programs(1) // H
    part_k = i_v.to(tl.int64) * B * T * H * K
    part_s = i_v.to(tl.int64) * B * T * H
    for m in range(0, N):
        n = N - 1 - m
        S = tl.load(h + (i_bh.to(tl.int64) * N + n) * K * V + ps, mask=ms, other=0.0)
        qc, kc, vc, bc, gam_m, gam, kdec, GC, pk, pv, mt, mk, mv, row = _load_chunk(
            q, k, v, beta, g, n, i_b, i_h, i_v, T, H, K, V, BT, BK, BV, USE_G)  # fmt: skip
        mtv = mt[:, None] & mv[None, :]
        dO = tl.load(do + pv, mask=mtv, other=0.0).to(tl.float32)  # [BT, BV]
        # Recompute the forward chunk.
        kk = tl.dot(kc, tl.trans(kc), input_precision=PREC)  # [BT, BT]
        A = tl.where(strict, kk * gam_m * bc[:, None], 0.0)
        Tinv = unit_lower_inverse(A, BT)
        kS = tl.dot(kc, S, input_precision=PREC)  # [BT, BV]
        R = bc[:, None] * (vc - gam[:, None] * kS)  # [BT, BV]
        U = tl.dot(Tinv, R, input_precision=PREC)
        P = tl.dot(qc, tl.trans(kc), input_precision=PREC) * gam_m * scale  # [BT, BT]
        kt = kc * kdec[:, None]  # [BT, BK]
        # Backward through the chunk.
        dU = tl.dot(tl.trans(P), dO, input_precision=PREC)
        dU += tl.dot(kt, dS, input_precision=PREC)  # [BT, BV]
        dR = tl.dot(tl.trans(Tinv), dU, input_precision=PREC)  # [BT, BV]
        dA = tl.where(strict, -tl.dot(dR, tl.trans(U), input_precision=PREC), 0.0)  # [BT, BT]
        dP = tl.dot(dO, tl.trans(U), input_precision=PREC)  # [BT, BT] (P is already masked)
        dPs = dP * gam_m * scale  # d(q_t . k_i)
        dAk = dA * gam_m * bc[:, None]  # d(k_t . k_i)
        UdS = tl.dot(U, tl.trans(dS), input_precision=PREC)  # [BT, BK]
        dq_c = tl.dot(dO, tl.trans(S), input_precision=PREC) * (gam * scale)[:, None]
        dq_c += tl.dot(dPs, kc, input_precision=PREC)  # [BT, BK]
        dk_c = tl.dot(dAk, kc, input_precision=PREC)
        dk_c += tl.dot(tl.trans(dAk), kc, input_precision=PREC)
        dk_c += tl.dot(tl.trans(dPs), qc, input_precision=PREC)
        dk_c -= tl.dot(dR, tl.trans(S), input_precision=PREC) * (bc * gam)[:, None]
        dk_c += UdS * kdec[:, None]
        db_c = tl.sum(dR * (vc - gam[:, None] * kS), axis=1) + tl.sum(dA * kk * gam_m, axis=1)
        mtk = mt[:, None] & mk[None, :]
        tl.store(dq + part_k + pk, dq_c, mask=mtk)
        tl.store(dk + part_k + pk, dk_c, mask=mtk)
        tl.store(dv + pv, (dR * bc[:, None]).to(dv.dtype.element_ty), mask=mtv)
        tl.store(db + part_s + row * H + i_h, db_c, mask=mt)
        if USE_G:
            # d log-decay: Gam[t, i] = exp(G_t - G_i) and the factors e^{G_t}, e^{G_C - G_i}.
            X = dA * A + dP * P  # [BT, BT], dGam ⊙ Gam
            dG = tl.sum(X, axis=1) - tl.sum(X, axis=0)
            dG -= tl.sum(dR * kS, axis=1) * bc * gam
            dG += tl.sum(dO * tl.dot(qc, S, input_precision=PREC), axis=1) * gam * scale
            y = tl.sum(kc * UdS, axis=1) * kdec  # [BT]
            dGC = tl.exp(GC) * tl.sum(tl.sum(dS * S, axis=1), axis=0) + tl.sum(y, axis=0)
            dG = dG - y + tl.where(r == BT - 1, dGC, 0.0)
            # g_s enters every G_t with t >= s: a suffix sum.
            dg_c = tl.sum(dG, axis=0) - tl.cumsum(dG, axis=0) + dG
            tl.store(dg + part_s + row * H + i_h, dg_c, mask=mt)
        kb = kc * (bc * gam)[:, None]
        if USE_G:
            dS = dS * tl.exp(GC)
        dS += tl.dot(tl.trans(qc * (gam * scale)[:, None]), dO, input_precision=PREC)
        dS -= tl.dot(tl.trans(kb), dR, input_precision=PREC)
    if USE_H0:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + ps, dS, mask=ms)


# Largest chunk tile. The chunking does not change the function; the caller's chunk size only
# picks the tile, a power of two in [16, MAX_TILE] (tl.dot needs 16). 32, not 64: the [BT, BT]
# blocks (A, its inverse, P, the decays) dominate the registers; offline ptxas for sm_90 at
# K = V = 64 spilled 3.4 KB per thread with BT = 64 and 0.3-0.8 KB with BT = 32.
MAX_TILE = 32


def _blocks(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    return min(MAX_TILE, ts.block(chunk_size)), ts.block(K), ts.value_block(V)


class _GatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, scale, h0, output_final_state, chunk_size):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BT, BK, BV = _blocks(K, V, chunk_size)
        N, NV = triton.cdiv(T, BT), triton.cdiv(V, BV)
        q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
        g = None if g is None else g.contiguous()
        dev = q.device
        o = ts.new_output((B, T, H, V), q.dtype, dev)
        save = any(ctx.needs_input_grad)
        hs = ts.new_output((B, H, N, K, V), torch.float32, dev) if save else o
        ht = ts.new_output((B, H, K, V), torch.float32, dev) if output_final_state else o
        _fwd_kernel[(NV, B * H)](
            q, k, v, beta, q if g is None else g, q if h0 is None else h0.contiguous(), o, hs,
            ht, T, N, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, USE_G=g is not None,
            USE_H0=h0 is not None, SAVE_H=save, STORE_HT=output_final_state,

            PREC=ts.dot_precision(q.dtype, _fwd_kernel), num_warps=ts.num_warps(BK, BV),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, beta, g, hs if save else None)
        ctx.meta = (scale, chunk_size, h0 is not None, h0.dtype if h0 is not None else None)
        final = ht.to(q.dtype) if output_final_state else None
        return o, final

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, g, hs = ctx.saved_tensors
        scale, chunk_size, has_h0, h0_dtype = ctx.meta
        B, T, H, K = q.shape
        V = v.shape[-1]
        BT, BK, BV = _blocks(K, V, chunk_size)
        N, NV = triton.cdiv(T, BT), triton.cdiv(V, BV)
        dev = q.device
        f32 = torch.float32
        dq = ts.new_output((NV, B, T, H, K), f32, dev)
        dk = ts.new_output((NV, B, T, H, K), f32, dev)
        dv = ts.new_output((B, T, H, V), q.dtype, dev)
        db = ts.new_output((NV, B, T, H), f32, dev)
        dg = ts.new_output((NV, B, T, H), f32, dev) if g is not None else db
        dh0 = ts.new_output((B, H, K, V), f32, dev) if has_h0 else db
        _bwd_kernel[(NV, B * H)](
            q, k, v, beta, q if g is None else g, hs, do.contiguous(),
            do if dht is None else dht.contiguous().float(), dq, dk, dv, db, dg, dh0, T, N,
            scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, USE_G=g is not None,
            USE_DHT=dht is not None, USE_H0=has_h0,
            PREC=ts.dot_precision(q.dtype, _fwd_kernel), num_warps=ts.num_warps(BK, BV),
        )  # fmt: skip
        dtype = q.dtype
        return (
            dq.sum(0).to(dtype),
            dk.sum(0).to(dtype),
            dv,
            db.sum(0).to(dtype),
            dg.sum(0).to(dtype) if g is not None else None,
            None,
            dh0.to(h0_dtype) if has_h0 else None,
            None,
            None,
        )


def gated_delta_rule_triton(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton form of the gated delta rule (``g=None``: plain delta rule); same contract as
    :func:`gated_delta_rule_chunk`, differentiable w.r.t. every input and the initial state.

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g (log decay, <= 0): [B, T, H];
    initial_state: [B, H, K, V]. Returns o [B, T, H, V] and the final state (or None).
    float64 inputs and K or V over 256 run :func:`gated_delta_rule_chunk` instead.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if ts.fallback_reason(q.dtype, q.shape[-1]) is not None:
        return gated_delta_rule_chunk(
            q, k, v, beta, g, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, chunk_size=chunk_size,
        )  # fmt: skip
    ts.check_launch("gated_delta_rule", _fwd_kernel, q, k, v, beta, g, initial_state)
    o, final = _GatedDeltaRule.apply(
        q, k, v, beta, g, scale, initial_state, output_final_state, chunk_size
    )
    return o, final
