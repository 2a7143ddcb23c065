"""Linear attention, Triton form: fused chunk kernels, forward and backward.

Causal linear attention (Katharopoulos et al., 2020) by the chunk form of README.md eq. (3)-(4):
one program per (value tile, batch x head) walks the chunks in order with the state tile
``S [K, BV]`` in registers,

    O = scale (Q S + ((Q K^T) ⊙ M) V),      S <- S + K^T V        (M: inclusive causal mask)

and the backward kernel walks them in reverse from the chunk-start states saved by the forward
(``[B, H, N, K, V]``, float32), carrying ``dS``:

    dQ = scale (dO S^T + (dO V^T ⊙ M) K),   dK = scale (dO V^T ⊙ M)^T Q + V dS^T,
    dV = scale ((Q K^T) ⊙ M)^T dO + K dS,   dS <- dS + scale Q^T dO.

Value columns are independent, so V is split across programs and the per-tile parts of dQ and
dK are summed afterwards. The compiler's normalized variant (Katharopoulos eq. 6) is this op
with one more value channel of ones, whose output column is the denominator ``scale q . z``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import triton_support as ts
from .chunk import linear_attention_chunk


@triton.jit
def _offsets(n, i_b, i_h, i_v, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):  # fmt: skip
    """Pointer offsets and masks of chunk n in the [B, T, H, K] / [B, T, H, V] layouts."""
    t = n * BT + tl.arange(0, BT)  # [BT]
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mt = t < T
    row = (i_b.to(tl.int64) * T + t) * H + i_h  # [BT]
    pk = row[:, None] * K + ik[None, :]  # [BT, BK]
    pv = row[:, None] * V + iv[None, :]  # [BT, BV]
    return pk, pv, mt[:, None] & (ik < K)[None, :], mt[:, None] & (iv < V)[None, :]


@triton.jit
def _fwd_kernel(q, k, v, h0, o, h, ht, T, N, scale, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                USE_H0: tl.constexpr, SAVE_H: tl.constexpr, STORE_HT: tl.constexpr,
                PREC: tl.constexpr):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bh = i_bh.to(tl.int64)
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    ps = ik[:, None] * V + iv[None, :]  # [BK, BV] offsets inside one state
    ms = (ik < K)[:, None] & (iv < V)[None, :]
    r = tl.arange(0, BT)
    causal = r[:, None] >= r[None, :]  # [BT, BT]
    if USE_H0:
        S = tl.load(h0 + bh * K * V + ps, mask=ms, other=0.0).to(tl.float32)  # [BK, BV]
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    for n in range(0, N):
        if SAVE_H:
            tl.store(h + (bh * N + n) * K * V + ps, S, mask=ms)
        pk, pv, mk, mv = _offsets(n, i_b, i_h, i_v, T, H, K, V, BT, BK, BV)
        qc = tl.load(q + pk, mask=mk, other=0.0).to(tl.float32)  # [BT, BK]
        kc = tl.load(k + pk, mask=mk, other=0.0).to(tl.float32)
        vc = tl.load(v + pv, mask=mv, other=0.0).to(tl.float32)  # [BT, BV]
        P = tl.where(causal, tl.dot(qc, tl.trans(kc), input_precision=PREC), 0.0)  # [BT, BT]
        out = tl.dot(qc, S, input_precision=PREC) + tl.dot(P, vc, input_precision=PREC)
        tl.store(o + pv, (out * scale).to(o.dtype.element_ty), mask=mv)
        S += tl.dot(tl.trans(kc), vc, input_precision=PREC)
    if STORE_HT:
        tl.store(ht + bh * K * V + ps, S, mask=ms)


@triton.jit
def _bwd_kernel(q, k, v, h, do, dht, dq, dk, dv, dh0, T, N, scale, H: tl.constexpr,
                K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, USE_DHT: tl.constexpr, USE_H0: tl.constexpr,
                PREC: tl.constexpr):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bh = i_bh.to(tl.int64)
    ik, iv = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    ps = ik[:, None] * V + iv[None, :]
    ms = (ik < K)[:, None] & (iv < V)[None, :]
    r = tl.arange(0, BT)
    causal = r[:, None] >= r[None, :]
    if USE_DHT:
        dS = tl.load(dht + bh * K * V + ps, mask=ms, other=0.0)  # [BK, BV]
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
    part = i_v.to(tl.int64) * (tl.num_programs(1) // H) * T * H * K  # this tile's dq/dk part
    for m in range(0, N):
        n = N - 1 - m
        S = tl.load(h + (bh * N + n) * K * V + ps, mask=ms, other=0.0)  # [BK, BV]
        pk, pv, mk, mv = _offsets(n, i_b, i_h, i_v, T, H, K, V, BT, BK, BV)
        qc = tl.load(q + pk, mask=mk, other=0.0).to(tl.float32)
        kc = tl.load(k + pk, mask=mk, other=0.0).to(tl.float32)
        vc = tl.load(v + pv, mask=mv, other=0.0).to(tl.float32)
        dO = tl.load(do + pv, mask=mv, other=0.0).to(tl.float32) * scale  # [BT, BV]
        dP = tl.where(causal, tl.dot(dO, tl.trans(vc), input_precision=PREC), 0.0)  # [BT, BT]
        P = tl.where(causal, tl.dot(qc, tl.trans(kc), input_precision=PREC), 0.0)
        dq_c = tl.dot(dO, tl.trans(S), input_precision=PREC) + tl.dot(dP, kc, input_precision=PREC)
        dk_c = tl.dot(tl.trans(dP), qc, input_precision=PREC)
        dk_c += tl.dot(vc, tl.trans(dS), input_precision=PREC)
        dv_c = tl.dot(tl.trans(P), dO, input_precision=PREC) + tl.dot(kc, dS, input_precision=PREC)
        tl.store(dq + part + pk, dq_c, mask=mk)
        tl.store(dk + part + pk, dk_c, mask=mk)
        tl.store(dv + pv, dv_c.to(dv.dtype.element_ty), mask=mv)
        dS += tl.dot(tl.trans(qc), dO, input_precision=PREC)
    if USE_H0:
        tl.store(dh0 + bh * K * V + ps, dS, mask=ms)


def _blocks(K: int, V: int, chunk_size: int) -> tuple[int, int, int]:
    # The chunking does not change the function: the caller's chunk size only picks the tile,
    # up to 64 x 64 / BK tokens. Offline ptxas for sm_90 (bf16, 8 warps): the backward takes
    # 160 KB of shared memory at K = 64, BT = 64; 272 KB (over the 227 KB limit) at K = 128,
    # BT = 64, 116 KB at BT = 32; 201 KB at K = 256, BT = 16.
    BK = ts.block(K)
    return min(max(16, 64 * 64 // BK), ts.block(chunk_size)), BK, ts.value_block(V)


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, h0, output_final_state, chunk_size):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BT, BK, BV = _blocks(K, V, chunk_size)
        N, NV = triton.cdiv(T, BT), triton.cdiv(V, BV)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        dev = q.device
        o = ts.new_output((B, T, H, V), q.dtype, dev)
        save = any(ctx.needs_input_grad)
        hs = ts.new_output((B, H, N, K, V), torch.float32, dev) if save else o
        ht = ts.new_output((B, H, K, V), torch.float32, dev) if output_final_state else o
        _fwd_kernel[(NV, B * H)](
            q, k, v, q if h0 is None else h0.contiguous(), o, hs, ht, T, N, scale, H=H, K=K,
            V=V, BT=BT, BK=BK, BV=BV, USE_H0=h0 is not None, SAVE_H=save,
            STORE_HT=output_final_state,
            PREC=ts.dot_precision(q.dtype, _fwd_kernel), num_warps=ts.num_warps(BK, BV),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, hs if save else None)
        ctx.meta = (scale, chunk_size, None if h0 is None else h0.dtype)
        return o, (ht.to(q.dtype) if output_final_state else None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, hs = ctx.saved_tensors
        scale, chunk_size, h0_dtype = ctx.meta
        B, T, H, K = q.shape
        V = v.shape[-1]
        BT, BK, BV = _blocks(K, V, chunk_size)
        N, NV = triton.cdiv(T, BT), triton.cdiv(V, BV)
        dev, f32 = q.device, torch.float32
        dq = ts.new_output((NV, B, T, H, K), f32, dev)
        dk = ts.new_output((NV, B, T, H, K), f32, dev)
        dv = ts.new_output((B, T, H, V), q.dtype, dev)
        dh0 = ts.new_output((B, H, K, V), f32, dev) if h0_dtype is not None else dv
        _bwd_kernel[(NV, B * H)](
            q, k, v, hs, do.contiguous(), do if dht is None else dht.contiguous().float(), dq,
            dk, dv, dh0, T, N, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            USE_DHT=dht is not None, USE_H0=h0_dtype is not None,
            PREC=ts.dot_precision(q.dtype, _fwd_kernel), num_warps=ts.num_warps(BK, BV),
        )  # fmt: skip
        dh0 = dh0.to(h0_dtype) if h0_dtype is not None else None
        return dq.sum(0).to(q.dtype), dk.sum(0).to(q.dtype), dv, None, dh0, None, None


def linear_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton form of linear attention; same contract as :func:`linear_attention_chunk`,
    differentiable w.r.t. q, k, v and the initial state.

    q, k: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V].
    Returns o [B, T, H, V] and the final state (or None). float64 inputs and K over 256 run
    :func:`linear_attention_chunk` instead.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if ts.fallback_reason(q.dtype, q.shape[-1]) is not None:
        return linear_attention_chunk(
            q, k, v, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, chunk_size=chunk_size,
        )  # fmt: skip
    ts.check_launch("linear_attention", _fwd_kernel, q, k, v, initial_state)
    return _LinearAttention.apply(q, k, v, scale, initial_state, output_final_state, chunk_size)
