"""Deep (MLP) memory, Triton form: the fused forward kernel and the autograd Function.

README.md §5 ("Chunk form") and its "Triton" section; Titans §3.1-3.2 (the LMM and its
mini-batch gradient form), Nested Learning §4.1 / eqs. 57, 88 (dgd). Covered: the 2-layer
residual MLP ``M(x) = x + W_2 s(W_1 x)`` or ``x + LN(W_2 s(W_1 x))`` (any activation, with or
without the non-affine layer norm, not gated), the l2
objective, the gd / momentum / dgd / dgd_momentum rules with the explicit or the proximal
step (NL eq. 57), l2 retention in the global (Titans) mode, toward zero or (gd, momentum)
toward the initial state, window 1, every read order. That is the LMM of Titans, the memories
of Hope (eqs. 83-89, dgd, self-generated values: the caller passes ``v = M_{t0}(v)`` read at
the chunk start) and the l2 variants of Miras and Atlas. Everything else runs
:func:`deep_memory_chunk`, with the reason in a warning (:func:`unsupported`).

One program per (batch, head) walks the chunks in order with both weight matrices
(``W1 [h, d]``, ``W2 [d, h]``) and their momenta in registers. Per chunk of C tokens:

1. write pass at the chunk-start weights: ``z = K W1^T``, ``A2 = s(z)``, ``e = K + A2 W2^T - V``,
   local errors ``delta2 = e``, ``delta1 = (e W2) ⊙ s'(z)`` (README eqs. B1, B3); the per-token
   gradients ``delta_l a_l^T`` are never formed, only these [C, width] factors, on chip; with
   the layer norm, ``delta2`` is the l2 error through the norm (B2) and every read is normalized;
2. the coefficients of eq. D1 from the gates (segment products by ``tl.cumprod``, no division,
   exact at ``alpha = 1`` / ``eta = 0``; momentum composes them with one [C, C] product, D3);
3. dgd's drives by the UT transform (eq. D5): one unit-lower inverse per layer;
4. reads by the dual form (eq. D2) layer by layer, and the chunk end by row ``C`` (or the last
   real token's row, D4) of eq. D1; decaying toward an anchor A adds ``(1 - b_t) A`` to the
   weights each read and the chunk end see (``W_t - A`` follows the unanchored recurrence).

The forward also writes every chunk-start state; the backward kernel (triton_backward.py)
walks the chunks in reverse from them. Under ``create_graph`` (second-order training) the
backward instead recomputes :func:`deep_memory_chunk` under autograd (float32), so the
gradients are differentiable again.
"""

from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .. import triton_support as ts
from ..triton_support import unit_lower_inverse
from .chunk import deep_memory_chunk
from .options import DeepMemoryOptions, MemoryResult, Tensor, Tensors, check_inputs
from .structure import ACTIVATIONS
from .triton_parts import (
    _act,
    _act_grad,
    _anchor_term,
    _chunk_inputs,
    _dual,
    _entry,
    _layer_norm,
    _layer_norm_back,
    _prev,
    _proximal,
    _row,
    _segments,
    _steps,
)

RULES = ("gd", "momentum", "dgd", "dgd_momentum")  # the rules the kernel covers
READ_CODES = {"write_then_read": 0, "read_then_write": 1, "chunk_start": 2}
# Largest chunk tile and largest weight tile [block(h), block(d)] a program holds. Chosen
# without a GPU (the four weight / momentum tiles plus the [BT, h] activations must stay in
# registers); to be tuned on one. Offline ptxas for sm_90 (bench_triton.py --compile-only,
# bf16, chunk tile 16, layer norm on; docs/triton.md) gives the forward 101 KB of shared memory
# at a 256 x 64 tile; the anchor's two more dot operands take it to 59 / 117 / 229 KB at 4096 /
# 8192 / 16384 elements, past the 227 KB an sm_90 block may use, hence half the budget.
MAX_CHUNK = 64
TILE_BUDGET = 128 * 128


def tile_budget(options: DeepMemoryOptions) -> int:
    """The largest weight tile (elements) the forward kernel takes for this memory."""
    return TILE_BUDGET // 2 if options.anchored else TILE_BUDGET


def num_warps(BH: int, BD: int) -> int:
    """Warps per program: 8 from a 64 x 32 weight tile on. Offline ptxas for sm_90
    (``bench_triton.py --compile-only``, dgd with momentum, chunk tile 16, tf32) spilled 360 B
    per thread with 4 warps at d = 32, h = 64 and 88 B with 8; 16 warps cap the registers at
    128 and spill more (1.8 KB instead of 1.5 KB at d = 64, h = 128). To be re-tuned on a GPU."""
    return 8 if BH * BD >= 64 * 32 else 4


@triton.jit
def _dgd_drive(bp, dp, wp, W0, S0, A, E, strict, MOM: tl.constexpr, PREC: tl.constexpr,
               BT: tl.constexpr):  # fmt: skip
    """dgd's drives ``x_t = W_{t-1} a_t + delta_t`` (eq. D5): ``(I - L) X = b' ⊙ A W0^T (+ d' ⊙
    A S0^T) + E`` with ``L[t, i] = w'[t, i] (a_t . a_i)`` strictly lower (primes: row t - 1)."""
    L = tl.where(strict, wp * tl.dot(A, tl.trans(A), input_precision=PREC), 0.0)  # [BT, BT]
    rhs = bp[:, None] * tl.dot(A, tl.trans(W0), input_precision=PREC) + E  # [BT, out]
    if MOM:
        rhs += dp[:, None] * tl.dot(A, tl.trans(S0), input_precision=PREC)
    return tl.dot(unit_lower_inverse(-L, BT), rhs, input_precision=PREC)


@triton.jit
def _fwd_kernel(q, k, v, theta, eta, alpha, w1, w2, s1, s2, a1, a2, o, w1_out, w2_out, s1_out,
                s2_out, ws1, ws2, ss1, ss2, T, N, EPS: tl.constexpr, H: tl.constexpr,
                D: tl.constexpr, HD: tl.constexpr, C: tl.constexpr,
                BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, ACT: tl.constexpr,
                MOM: tl.constexpr, DGD: tl.constexpr, PROX: tl.constexpr, READ: tl.constexpr,
                NORM: tl.constexpr, USE_S0: tl.constexpr, SAVE: tl.constexpr,
                ANCHOR: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    bh = i_bh.to(tl.int64)
    idx = tl.arange(0, BT)
    lower = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    jd, jh = tl.arange(0, BD), tl.arange(0, BH)
    p1 = jh[:, None] * D + jd[None, :]  # [BH, BD] offsets in W1 [h, d]
    m1 = (jh < HD)[:, None] & (jd < D)[None, :]
    p2 = jd[:, None] * HD + jh[None, :]  # [BD, BH] offsets in W2 [d, h]
    m2 = (jd < D)[:, None] & (jh < HD)[None, :]
    cols = jd < D  # [BD], the real features (the layer norm's)
    W1 = tl.load(w1 + bh * HD * D + p1, mask=m1, other=0.0).to(tl.float32)  # [BH, BD]
    W2 = tl.load(w2 + bh * D * HD + p2, mask=m2, other=0.0).to(tl.float32)  # [BD, BH]
    # Padding (hidden units past h, features past d) stays exactly zero: s(0) = 0 for every
    # activation and the padded errors are zero, so no update reaches it.
    if USE_S0:
        S1 = tl.load(s1 + bh * HD * D + p1, mask=m1, other=0.0).to(tl.float32)
        S2 = tl.load(s2 + bh * D * HD + p2, mask=m2, other=0.0).to(tl.float32)
    else:
        S1 = tl.zeros([BH, BD], dtype=tl.float32)
        S2 = tl.zeros([BD, BH], dtype=tl.float32)
    if ANCHOR:  # retention decays toward A: W_t = b_t W0 + (1 - b_t) A + (the unanchored rest)
        AN1 = tl.load(a1 + bh * HD * D + p1, mask=m1, other=0.0).to(tl.float32)  # [BH, BD]
        AN2 = tl.load(a2 + bh * D * HD + p2, mask=m2, other=0.0).to(tl.float32)  # [BD, BH]
    for n in range(0, N):
        if SAVE:  # the chunk-start states the backward kernel restarts every chunk from
            off = (bh * N + n) * HD * D
            tl.store(ws1 + off + p1, W1, mask=m1)
            tl.store(ws2 + off + p2, W2, mask=m2)
            if MOM:
                tl.store(ss1 + off + p1, S1, mask=m1)
                tl.store(ss2 + off + p2, S2, mask=m2)
        # Tokens past the chunk or past T: theta = 0, eta = 1, alpha = 0 (no write, no decay).
        Q, K, V, th, r, mt, row, pd, mtd = _chunk_inputs(
            q, k, v, theta, alpha, i_b, i_h, n, idx, jd, T, H, D, C
        )  # Q, K, V [BT, BD]; th, r, mt, row [BT]; pd, mtd [BT, BD]

        # 1. Write pass at the chunk-start weights (README eqs. B1-B3): inputs and errors.
        Z = tl.dot(K, tl.trans(W1), input_precision=PREC)  # [BT, BH]
        A2 = _act(Z, ACT)  # [BT, BH], layer 2's inputs
        Y2 = tl.dot(A2, tl.trans(W2), input_precision=PREC)  # [BT, BD], layer 2's output z_2
        if NORM:  # M(k) = k + LN(z_2): the l2 error dl/dy goes back through the norm (B2)
            Nk, rho = _layer_norm(Y2, cols, D, EPS)  # [BT, BD], [BT]
            E = _layer_norm_back(K + Nk - V, Nk, rho, cols, D)  # [BT, BD], delta_2
        else:
            E = K + Y2 - V  # [BT, BD], dl/dy of l2 = delta_2
        E1 = tl.dot(E, W2, input_precision=PREC) * _act_grad(Z, ACT)  # [BT, BH], delta_1

        # 2. Coefficients of eq. D1, rows t = after token t: W_t = b W0 + d S0 + sum w x a^T.
        # Every coefficient is a gate-only matrix times the step theta of the token written;
        # dgd's proximal step (eq. D6) gives each layer its own step, so its own w.
        Pr, b = _segments(r, BT)  # [BT, BT], [BT]
        if MOM:
            et = tl.load(eta + row * H + i_h, mask=mt, other=1.0).to(tl.float32)
            Pe, sb = _segments(et, BT)
            d = tl.sum(Pr * sb[None, :], axis=1)  # [BT], weight of S0 (eq. D3)
            Mw = tl.dot(Pr, Pe, input_precision=PREC)  # [BT, BT], w without the step
        else:
            Pe = Pr
            d = tl.zeros([BT], dtype=tl.float32)
            Mw = Pr
        # Rows t - 1 (the weights each token's write starts from / read_then_write reads).
        bp, dp = _prev(b, idx, 1.0), _prev(d, idx, 0.0)
        shift = (idx[None, :] == idx[:, None] - 1).to(tl.float32)  # [BT, BT]
        if PROX:
            th1 = _proximal(th, K)  # [BT], theta / (1 + theta ||k||^2)
            th2 = _proximal(th, A2)  # [BT], theta / (1 + theta ||a_2||^2)
        else:
            th1 = th
            th2 = th
        w1c, sw1, wp1 = _steps(th1, Mw, Pe, lower, shift)
        if PROX:
            w2c, sw2, wp2 = _steps(th2, Mw, Pe, lower, shift)
        else:
            w2c, sw2, wp2 = w1c, sw1, wp1

        # 3. Drives: the local errors, or dgd's x_t = W_{t-1} a_t + delta_t (eq. D5).
        if DGD:
            F1, F2 = E1, E  # the drives' rhs beyond b' W0 a (and d' S0 a)
            if ANCHOR:  # W_{t-1} a_t holds (1 - b_{t-1}) A a_t too
                F1 = F1 + _anchor_term(bp, K, AN1, PREC)
                F2 = F2 + _anchor_term(bp, A2, AN2, PREC)
            X1 = _dgd_drive(bp, dp, wp1, W1, S1, K, F1, strict, MOM, PREC, BT)  # [BT, BH]
            X2 = _dgd_drive(bp, dp, wp2, W2, S2, A2, F2, strict, MOM, PREC, BT)  # [BT, BD]
        else:
            X1 = E1
            X2 = E

        # 4. Reads, layer by layer (eq. D2); chunk_start is the plain MLP at W_{t0}.
        if READ == 2:
            Hr = _act(tl.dot(Q, tl.trans(W1), input_precision=PREC), ACT)  # [BT, BH]
            Yr = tl.dot(Hr, tl.trans(W2), input_precision=PREC)  # [BT, BD]
        else:
            if READ == 0:
                rb, rd, rw1, rw2 = b, d, w1c, w2c
            else:
                rb, rd, rw1, rw2 = bp, dp, wp1, wp2
            U = _dual(rb, rd, rw1, W1, S1, K, X1, Q, MOM, PREC)  # [BT, BH]
            if ANCHOR:
                U += (1.0 - rb)[:, None] * tl.dot(Q, tl.trans(AN1), input_precision=PREC)
            Hr = _act(U, ACT)  # [BT, BH]
            Yr = _dual(rb, rd, rw2, W2, S2, A2, X2, Hr, MOM, PREC)  # [BT, BD]
            if ANCHOR:
                Yr += (1.0 - rb)[:, None] * tl.dot(Hr, tl.trans(AN2), input_precision=PREC)
        if NORM:  # each token's read through the norm, at its own weights
            Yr = _layer_norm(Yr, cols, D, EPS)[0]
        out = Q + Yr  # [BT, BD]
        tl.store(o + pd, out.to(o.dtype.element_ty), mask=mtd)

        # 5. The state after the chunk's last real token (eq. D4).
        last = tl.minimum(T - n * C, C) - 1
        we1, we2 = _row(w1c, idx, last), _row(w2c, idx, last)  # [BT]
        G1 = tl.dot(tl.trans(X1 * we1[:, None]), K, input_precision=PREC)  # [BH, BD]
        G2 = tl.dot(tl.trans(X2 * we2[:, None]), A2, input_precision=PREC)  # [BD, BH]
        be = _entry(b, idx, last)
        W1n = be * W1 + G1
        W2n = be * W2 + G2
        if ANCHOR:
            W1n += (1.0 - be) * AN1
            W2n += (1.0 - be) * AN2
        if MOM:
            de, sbe = _entry(d, idx, last), _entry(sb, idx, last)
            swe1, swe2 = _row(sw1, idx, last), _row(sw2, idx, last)
            W1n += de * S1
            W2n += de * S2
            S1 = sbe * S1 + tl.dot(tl.trans(X1 * swe1[:, None]), K, input_precision=PREC)
            S2 = sbe * S2 + tl.dot(tl.trans(X2 * swe2[:, None]), A2, input_precision=PREC)
        W1 = W1n
        W2 = W2n
    tl.store(w1_out + bh * HD * D + p1, W1, mask=m1)
    tl.store(w2_out + bh * D * HD + p2, W2, mask=m2)
    if MOM:
        tl.store(s1_out + bh * HD * D + p1, S1, mask=m1)
        tl.store(s2_out + bh * D * HD + p2, S2, mask=m2)


def unsupported(options: DeepMemoryOptions, dtype: torch.dtype, *, gamma: Tensor | None = None,
                window_prefix: Tensors | None = None,
                omega: Tensor | None = None) -> str | None:  # fmt: skip
    """Why the Triton kernel does not run this memory (the chunk form does), or None."""
    st, o = options.structure, options
    checks = (
        (st.gated, "the gated memory"),
        (st.depth != 2, f"depth {st.depth} (the kernel holds a 2-layer MLP)"),
        (not st.residual, "a memory without the residual path"),
        (o.objective != "l2", f"objective={o.objective!r} (the kernel has l2)"),
        (o.rule not in RULES, f"rule={o.rule!r} (the kernel has {', '.join(RULES)})"),
        (o.retention != "l2", f"retention={o.retention!r} (the kernel has l2)"),
        (o.retention_mode != "global", f"retention_mode={o.retention_mode!r}"),
        (o.window != 1 or gamma is not None or window_prefix is not None, "an Omega window"),
        (omega is not None, "Omega window weights that depend on t"),
        (o.lag_token, "the lag token"),
        (o.chunk_size > MAX_CHUNK, f"chunk_size {o.chunk_size} > {MAX_CHUNK}"),
        (ts.block(st.hidden) * ts.block(st.d_in) > tile_budget(o),
         f"weight tile {st.hidden} x {st.d_in} over {tile_budget(o)} elements"),
    )  # fmt: skip
    for bad, why in checks:
        if bad:
            return why
    return ts.fallback_reason(dtype, st.d_in, st.hidden)


def _backward_fused(options: DeepMemoryOptions) -> bool:
    from . import triton_backward

    return triton_backward.unfused(options) is None


class _DeepMemory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, options, read, q, k, v, theta, eta, alpha, w1, w2, s1, s2, a1, a2):
        st = options.structure
        B, T, H, D = q.shape
        HD, C = st.hidden, options.chunk_size
        BT, BD, BH = ts.block(C), ts.block(D), ts.block(HD)
        mom = options.has_momentum
        dev, f32 = q.device, torch.float32
        args = [x.contiguous() for x in (q, k, v, theta, eta, alpha, w1, w2)]
        s0 = [x.contiguous() for x in (s1, s2)] if s1 is not None else [w1, w2]
        anchor = [x.contiguous() for x in (a1, a2)] if a1 is not None else [w1, w2]
        o = ts.new_output((B, T, H, D), q.dtype, dev)
        finals = [ts.new_output((B, H, *w.shape[-2:]), f32, dev) for w in (w1, w2)]
        moms = [ts.new_output((B, H, *w.shape[-2:]), f32, dev) for w in (w1, w2)] if mom else finals
        # The state at every chunk start, [B, H, N, out, in] (and the momentum's), for the
        # backward kernel; not written when nothing needs a gradient.
        N = -(-T // C)
        save = any(ctx.needs_input_grad[2:]) and _backward_fused(options)
        shapes = [(B, H, N, *w.shape[-2:]) for w in (w1, w2)] if save else []
        starts = [torch.empty(sh, dtype=f32, device=dev) for sh in shapes * (2 if mom else 1)]
        slots = starts if mom else starts * 2
        _fwd_kernel[(B * H,)](
            *args, *s0, *anchor, o, *finals, *moms, *(slots or [o] * 4), T, N, EPS=st.norm_eps,
            H=H, D=D, HD=HD, C=C, BT=BT, BD=BD, BH=BH, ACT=ACTIVATIONS.index(st.activation),
            MOM=mom, DGD=options.rule.startswith("dgd"), PROX=options.dgd_step == "proximal",
            READ=READ_CODES[read], NORM=st.norm == "layernorm", USE_S0=s1 is not None,
            SAVE=save, ANCHOR=a1 is not None, PREC=ts.dot_precision(q.dtype, _fwd_kernel),
            num_warps=num_warps(BH, BD),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, theta, eta, alpha, w1, w2, s1, s2, a1, a2, *starts)
        ctx.n_starts = len(starts)
        ctx.options, ctx.read = options, read
        ctx.set_materialize_grads(False)
        finals = [f.to(w.dtype) for f, w in zip(finals, (w1, w2), strict=True)]
        moms = [m.to(w1.dtype) for m in moms] if mom else [o.new_zeros(0), o.new_zeros(0)]
        return o, *finals, *moms

    @staticmethod
    def backward(ctx, do, dw1, dw2, ds1, ds2):
        every = ctx.saved_tensors
        saved, starts = every[: len(every) - ctx.n_starts], every[len(every) - ctx.n_starts :]
        needs = ctx.needs_input_grad[2:]
        ups = (do, dw1, dw2, ds1, ds2)
        if not any(needs) or all(u is None for u in ups):
            return (None,) * (2 + len(saved))
        create = torch.is_grad_enabled()
        from . import triton_backward as fused

        if not create and fused.unfused(ctx.options) is None:
            # The fused kernel (triton_backward.py): a reverse chunk walk from the saved
            # chunk-start states, every chunk's forward recomputed on chip.
            try:
                seq, w0, s0, a0 = fused.backward(ctx.options, ctx.read, list(saved),
                                                 list(starts), list(ups))  # fmt: skip
            except OutOfResources as err:  # a GPU with less shared memory than the budget's
                warnings.warn(f"deep_memory: the triton backward runs the torch chunk form: {err}",
                              stacklevel=2)  # fmt: skip
            else:
                got = [*seq, *w0, *(s0 or (None, None)), *(a0 or (None, None))]
                return None, None, *(None if g is None or not need else g.to(x.dtype)
                                     for g, x, need in zip(got, saved, needs, strict=True))  # fmt: skip
        # Under create_graph (second-order training: grad mode is on here) the fused kernel's
        # gradients would not be differentiable again, and memories over the backward kernel's
        # tile budget would not fit its shared memory: the chunk form is recomputed (float32)
        # from the saved inputs and differentiated: exact, second-order terms of the write pass
        # included. The recomputation hangs off the inputs' own graph (one view per argument,
        # so an input passed twice gets each slot's part), and the gradients are
        # differentiable again: second-order training works as on the chunk form.

        def prepared(x, need):
            if x is None:
                return None
            if create and need:
                return x.float().view_as(x)
            return x.detach().float().requires_grad_(need)

        leaves = [prepared(x, need) for x, need in zip(saved, needs, strict=True)]
        wanted = [x for x, need in zip(leaves, needs, strict=True) if x is not None and need]
        q, k, v, theta, eta, alpha, w1, w2, s1, s2, a1, a2 = leaves
        with torch.enable_grad():
            o, (W, S) = deep_memory_chunk(
                q, k, v, theta, eta, alpha, [w1, w2], ctx.options, read=ctx.read,
                momentum=None if s1 is None else [s1, s2], output_final_state=True,
                anchor=None if a1 is None else [a1, a2],
            )  # fmt: skip
            outs = [o, *W, *(S if S is not None else (None, None))]
            pairs = [(y, u.float()) for y, u in zip(outs, ups, strict=True)
                     if y is not None and u is not None]  # fmt: skip
            got = torch.autograd.grad([y for y, _ in pairs], wanted, [u for _, u in pairs],
                                      allow_unused=True, create_graph=create)  # fmt: skip
        found = dict(zip(map(id, wanted), got, strict=True))
        grads = []
        for x, leaf in zip(saved, leaves, strict=True):
            g = found.get(id(leaf)) if leaf is not None else None
            grads.append(None if g is None else g.to(x.dtype))
        return None, None, *grads


def deep_memory_triton(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                       weights: Tensors, options: DeepMemoryOptions, *,
                       read: str = "write_then_read", momentum: Tensors | None = None,
                       output_final_state: bool = False, delta: Tensor | None = None,
                       gamma: Tensor | None = None,
                       window_prefix: Tensors | None = None,
                       omega: Tensor | None = None,
                       anchor: Tensors | None = None) -> MemoryResult:  # fmt: skip
    """The Triton form of :func:`deep_memory` (same contract), differentiable w.r.t. every
    input, the initial weights and the initial momentum. Memories the kernel does not cover
    (:func:`unsupported`) run :func:`deep_memory_chunk`, with a warning that says why.
    ``delta`` (a Huber threshold) has no effect on the l2 objective the kernel covers."""
    check_inputs(options, q, k, v, (theta, eta, alpha), weights, momentum, read=read,
                 delta=delta, gamma=gamma, window_prefix=window_prefix, omega=omega,
                 anchor=anchor)  # fmt: skip
    reason = unsupported(options, q.dtype, gamma=gamma, window_prefix=window_prefix, omega=omega)
    if reason is None:  # a memory the kernel covers has two layers: two weights, momenta, anchors
        s1, s2 = (None, None) if momentum is None else momentum
        a1, a2 = (None, None) if anchor is None else anchor
        ts.check_launch("deep_memory", _fwd_kernel, q, k, v, theta, eta, alpha, *weights, s1, s2,
                        a1, a2)  # fmt: skip
        try:
            o, w1, w2, m1, m2 = _DeepMemory.apply(options, read, q, k, v, theta, eta, alpha,
                                                  weights[0], weights[1], s1, s2, a1, a2)  # fmt: skip
        except OutOfResources as err:  # at launch, before any work: this GPU has less
            reason = str(err)  # shared memory than the tile budget assumes (sm_90's 227 KB)
    if reason is not None:
        warnings.warn(f"deep_memory: the triton backend runs the torch chunk form for {reason}",
                      stacklevel=2)  # fmt: skip
        return deep_memory_chunk(
            q, k, v, theta, eta, alpha, weights, options, read=read, momentum=momentum,
            output_final_state=output_final_state, delta=delta, gamma=gamma,
            window_prefix=window_prefix, omega=omega, anchor=anchor,
        )  # fmt: skip
    if not output_final_state:
        return o, None
    return o, ([w1, w2], [m1, m2] if options.has_momentum else None)
