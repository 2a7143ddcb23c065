"""Deep (MLP) memory, Triton backward: a reverse chunk walk that recomputes each chunk on chip.

README.md §8 ("Backward kernel"), the adjoint of §5.3 / eqs. B1-B3, D1-D5 for the variant the
forward kernel covers (triton.py: the 2-layer residual MLP with or without its layer norm, l2,
gd / momentum / dgd / dgd_momentum with the explicit or the proximal step, global l2
retention toward zero or toward an anchor, every read order).

The forward saves the state at every chunk start. One program per (batch, head) walks the
chunks from last to first holding the gradient of the state at the current chunk's end
(``dW1, dW2`` and with momentum ``dS1, dS2``) in registers. Per chunk it reloads the saved
start state, recomputes the chunk's forward on chip (write pass, coefficients, drives, reads)
and runs its adjoint in reverse order:

5. chunk end (D4): the end-state gradient reaches the start state, the drives, the layer
   inputs and row ``last`` of the coefficients;
4. reads (D2), layer 2 then layer 1 (chunk_start: the plain MLP at the start state);
3. dgd's drives (D5): ``drhs = (I - L)^{-T} dX``, ``dL = drhs X^T`` (strictly lower);
2. the coefficients: row shifts undone, ``w = -theta ⊙ P^r P^eta`` split into the gate
   matrices and the (per-layer, proximal) steps, and the segment products of ``r = 1 - alpha``
   and ``eta`` differentiated without division (README §8 gives the formula);
1. the write pass (B1-B3), including the second-order term ``s''(z)`` of ``delta_1`` and, with
   the layer norm, the adjoint of the error through it (triton_adjoints._norm_error_bwd).

Per-token gradients, like the forward's per-token updates, exist only as [C, width] factors.
The result is the gradient of q, k, v, theta, eta, alpha and of the chunk-start state of chunk
0, i.e. of the initial weights and momentum, and of the anchor (summed over every chunk).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import triton_support as ts
from .triton_adjoints import _drive_parts, _dual_bwd, _end_bwd, _norm_error_bwd, _segments_bwd
from .triton_parts import (
    _act,
    _act_grad,
    _act_grad2,
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

# Largest weight tile [block(h), block(d)] the backward kernel takes. Offline ptxas for sm_90
# (bench_triton.py --compile-only, bf16 inputs, chunk tile 16; docs/triton.md) put its shared
# memory, with dgd (Hope's rule), at 20 / 60 / 104 / 198 / 374 KB for tiles of 512 / 2048 /
# 4096 / 8192 / 16384 elements; an sm_90 block may use 227 KB. Momentum without dgd holds more
# (132 / 241 KB at 4096 / 8192, with the layer norm), and with the anchor 196 / 369 KB, so the
# other rules get half the budget. Larger memories (the Titans-sized d = 64, h = 256) take the
# chunk form's backward after the fused forward.
TILE_BUDGET = 64 * 128


def tile_budget(options) -> int:
    """The largest weight tile (elements) the backward kernel takes for this memory."""
    return TILE_BUDGET if options.rule.startswith("dgd") and not options.anchored else TILE_BUDGET // 2


def unfused(options) -> str | None:
    """Why the backward kernel does not run a memory the forward kernel covers, or None."""
    st = options.structure
    if ts.block(st.hidden) * ts.block(st.d_in) > tile_budget(options):
        return (f"weight tile {st.hidden} x {st.d_in} over the backward's {tile_budget(options)} "
                "elements (shared memory)")  # fmt: skip
    return None


@triton.jit
def _bwd_kernel(q, k, v, theta, eta, alpha, ws1, ws2, ss1, ss2, a1, a2, do, dw1, dw2, ds1, ds2,
                dq, dk, dv, dtheta, deta, dalpha, dw1_0, dw2_0, ds1_0, ds2_0, da1, da2,
                T, N, H: tl.constexpr, D: tl.constexpr, HD: tl.constexpr, C: tl.constexpr,
                BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, ACT: tl.constexpr,
                MOM: tl.constexpr, DGD: tl.constexpr, PROX: tl.constexpr, READ: tl.constexpr,
                NORM: tl.constexpr, EPS: tl.constexpr, HAS_DO: tl.constexpr,
                HAS_DW: tl.constexpr, HAS_DS: tl.constexpr, ANCHOR: tl.constexpr,
                PREC: tl.constexpr):  # fmt: skip
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    bh = i_bh.to(tl.int64)
    idx = tl.arange(0, BT)
    lower = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    shift = (idx[None, :] == idx[:, None] - 1).to(tl.float32)  # [BT, BT], row t <- row t - 1
    jd, jh = tl.arange(0, BD), tl.arange(0, BH)
    p1 = jh[:, None] * D + jd[None, :]  # [BH, BD] offsets in W1 [h, d]
    m1 = (jh < HD)[:, None] & (jd < D)[None, :]
    p2 = jd[:, None] * HD + jh[None, :]  # [BD, BH] offsets in W2 [d, h]
    m2 = (jd < D)[:, None] & (jh < HD)[None, :]
    cols = jd < D  # [BD], the layer norm's real features
    # Gradients of the state at the end of the current chunk (the upstream ones at the end).
    if HAS_DW:
        GW1 = tl.load(dw1 + bh * HD * D + p1, mask=m1, other=0.0).to(tl.float32)  # [BH, BD]
        GW2 = tl.load(dw2 + bh * D * HD + p2, mask=m2, other=0.0).to(tl.float32)  # [BD, BH]
    else:
        GW1 = tl.zeros([BH, BD], dtype=tl.float32)
        GW2 = tl.zeros([BD, BH], dtype=tl.float32)
    if HAS_DS:
        GS1 = tl.load(ds1 + bh * HD * D + p1, mask=m1, other=0.0).to(tl.float32)
        GS2 = tl.load(ds2 + bh * D * HD + p2, mask=m2, other=0.0).to(tl.float32)
    else:
        GS1 = tl.zeros([BH, BD], dtype=tl.float32)
        GS2 = tl.zeros([BD, BH], dtype=tl.float32)
    if ANCHOR:  # the anchor A of the forward's (1 - b) A terms, and its gradient over all chunks
        AN1 = tl.load(a1 + bh * HD * D + p1, mask=m1, other=0.0).to(tl.float32)  # [BH, BD]
        AN2 = tl.load(a2 + bh * D * HD + p2, mask=m2, other=0.0).to(tl.float32)  # [BD, BH]
    dAN1 = tl.zeros([BH, BD], dtype=tl.float32)
    dAN2 = tl.zeros([BD, BH], dtype=tl.float32)
    for nn in range(0, N):
        n = N - 1 - nn
        # ---- the chunk's forward again, from its saved start state (triton.py, steps 1-4)
        off1 = (bh * N + n) * HD * D
        W1 = tl.load(ws1 + off1 + p1, mask=m1, other=0.0)  # [BH, BD]
        W2 = tl.load(ws2 + off1 + p2, mask=m2, other=0.0)  # [BD, BH]
        if MOM:
            S1 = tl.load(ss1 + off1 + p1, mask=m1, other=0.0)
            S2 = tl.load(ss2 + off1 + p2, mask=m2, other=0.0)
        else:
            S1 = tl.zeros([BH, BD], dtype=tl.float32)
            S2 = tl.zeros([BD, BH], dtype=tl.float32)
        # Tokens past the chunk or past T: theta = 0, eta = 1, alpha = 0 (no write, no decay).
        Q, K, V, th, r, mt, row, pd, mtd = _chunk_inputs(
            q, k, v, theta, alpha, i_b, i_h, n, idx, jd, T, H, D, C
        )  # Q, K, V [BT, BD]; th, r, mt, row [BT]; pd, mtd [BT, BD]
        Z = tl.dot(K, tl.trans(W1), input_precision=PREC)  # [BT, BH]
        A2 = _act(Z, ACT)
        sZ = _act_grad(Z, ACT)
        Y2 = tl.dot(A2, tl.trans(W2), input_precision=PREC)  # [BT, BD]
        if NORM:
            Nk, rho = _layer_norm(Y2, cols, D, EPS)
            Gk = K + Nk - V  # [BT, BD], dl/dy before the norm's adjoint
            E = _layer_norm_back(Gk, Nk, rho, cols, D)
        else:
            E = K + Y2 - V  # [BT, BD]
        EW2 = tl.dot(E, W2, input_precision=PREC)  # [BT, BH]
        E1 = EW2 * sZ
        Pr, b = _segments(r, BT)
        if MOM:
            et = tl.load(eta + row * H + i_h, mask=mt, other=1.0).to(tl.float32)
            Pe, sb = _segments(et, BT)
            d = tl.sum(Pr * sb[None, :], axis=1)
            Mw = tl.dot(Pr, Pe, input_precision=PREC)
        else:
            Pe, sb = Pr, b
            d = tl.zeros([BT], dtype=tl.float32)
            Mw = Pr
        bp, dp = _prev(b, idx, 1.0), _prev(d, idx, 0.0)
        if PROX:
            th1 = _proximal(th, K)
            th2 = _proximal(th, A2)
        else:
            th1 = th
            th2 = th
        w1c, sw1, wp1 = _steps(th1, Mw, Pe, lower, shift)
        w2c, sw2, wp2 = _steps(th2, Mw, Pe, lower, shift)
        if DGD:
            F1, F2 = E1, E  # the drives' rhs beyond b' W0 a (E1, E stay for the write pass)
            if ANCHOR:
                F1 = F1 + _anchor_term(bp, K, AN1, PREC)
                F2 = F2 + _anchor_term(bp, A2, AN2, PREC)
            X1, Mi1 = _drive_parts(bp, dp, wp1, W1, S1, K, F1, strict, MOM, PREC, BT)
            X2, Mi2 = _drive_parts(bp, dp, wp2, W2, S2, A2, F2, strict, MOM, PREC, BT)
        else:
            X1 = E1
            X2 = E
        last = tl.minimum(T - n * C, C) - 1

        # ---- adjoint. 5. chunk end (eq. D4).
        we1, we2 = _row(w1c, idx, last), _row(w2c, idx, last)
        swe1, swe2 = _row(sw1, idx, last), _row(sw2, idx, last)
        dX1, dK, dwe1, dswe1, dbe1, dde1, dsbe1 = _end_bwd(GW1, GS1, W1, S1, K, X1, we1, swe1,
                                                           MOM, PREC)  # fmt: skip
        dX2, dA2, dwe2, dswe2, dbe2, dde2, dsbe2 = _end_bwd(GW2, GS2, W2, S2, A2, X2, we2, swe2,
                                                            MOM, PREC)  # fmt: skip
        at_last = idx[:, None] == last  # [BT, 1] row `last`
        dwc1 = tl.where(at_last, dwe1[None, :], 0.0)  # [BT, BT]
        dwc2 = tl.where(at_last, dwe2[None, :], 0.0)
        dsw1 = tl.where(at_last, dswe1[None, :], 0.0)
        dsw2 = tl.where(at_last, dswe2[None, :], 0.0)
        db = tl.where(idx == last, dbe1 + dbe2, 0.0)  # [BT]
        dd = tl.where(idx == last, dde1 + dde2, 0.0)
        dsb = tl.where(idx == last, dsbe1 + dsbe2, 0.0)
        be, de = _entry(b, idx, last), _entry(d, idx, last)
        dS1n = de * GW1  # gradients of the chunk-start momentum, accumulated below
        dS2n = de * GW2
        if MOM:
            sbe = _entry(sb, idx, last)
            dS1n += sbe * GS1
            dS2n += sbe * GS2
        dW1n = be * GW1  # gradients of the chunk-start state, accumulated below
        dW2n = be * GW2
        if ANCHOR:  # the end state's (1 - be) A
            dAN1 += (1.0 - be) * GW1
            dAN2 += (1.0 - be) * GW2
            ga = tl.sum(tl.sum(GW1 * AN1, axis=1), axis=0) + tl.sum(tl.sum(GW2 * AN2, axis=1), axis=0)
            db -= tl.where(idx == last, ga, 0.0)
        dbp = tl.zeros([BT], dtype=tl.float32)
        ddp = tl.zeros([BT], dtype=tl.float32)
        dwp1 = tl.zeros([BT, BT], dtype=tl.float32)
        dwp2 = tl.zeros([BT, BT], dtype=tl.float32)

        # 4. reads (eq. D2; chunk_start: the MLP at the start state).
        if HAS_DO:
            dO = tl.load(do + pd, mask=mtd, other=0.0).to(tl.float32)  # [BT, BD]
        else:
            dO = tl.zeros([BT, BD], dtype=tl.float32)
        dQ = dO
        if READ == 2:
            Zq = tl.dot(Q, tl.trans(W1), input_precision=PREC)  # [BT, BH]
            Hr = _act(Zq, ACT)
            dY = dO  # [BT, BD], the read's layer-2 output gradient
            if NORM:  # the read's norm: its Jacobian is symmetric, so B2 maps dO back
                Nr, rr = _layer_norm(tl.dot(Hr, tl.trans(W2), input_precision=PREC), cols, D, EPS)
                dY = _layer_norm_back(dO, Nr, rr, cols, D)
            dW2n += tl.dot(tl.trans(dY), Hr, input_precision=PREC)
            dZq = tl.dot(dY, W2, input_precision=PREC) * _act_grad(Zq, ACT)  # [BT, BH]
            dQ += tl.dot(dZq, W1, input_precision=PREC)
            dW1n += tl.dot(tl.trans(dZq), Q, input_precision=PREC)
        else:
            if READ == 0:
                rb, rd, rw1, rw2 = b, d, w1c, w2c
            else:
                rb, rd, rw1, rw2 = bp, dp, wp1, wp2
            U = _dual(rb, rd, rw1, W1, S1, K, X1, Q, MOM, PREC)  # [BT, BH]
            if ANCHOR:  # reads at b W0 + (1 - b) A + ...: the (1 - b) A r terms
                cb = 1.0 - rb
                QA = tl.dot(Q, tl.trans(AN1), input_precision=PREC)  # [BT, BH]
                U += cb[:, None] * QA
            Hr = _act(U, ACT)
            dY = dO
            if NORM:
                Yr = _dual(rb, rd, rw2, W2, S2, A2, X2, Hr, MOM, PREC)  # [BT, BD]
                if ANCHOR:
                    Yr += cb[:, None] * tl.dot(Hr, tl.trans(AN2), input_precision=PREC)
                Nr, rr = _layer_norm(Yr, cols, D, EPS)
                dY = _layer_norm_back(dO, Nr, rr, cols, D)
            dHr, gW, gS, gX, gA, gw, gb, gd = _dual_bwd(rb, rd, rw2, W2, S2, A2, X2, Hr, dY,
                                                        MOM, PREC)  # fmt: skip
            if ANCHOR:
                gY = cb[:, None] * dY  # [BT, BD]
                dHr += tl.dot(gY, AN2, input_precision=PREC)
                dAN2 += tl.dot(tl.trans(gY), Hr, input_precision=PREC)
                gb -= tl.sum(dY * tl.dot(Hr, tl.trans(AN2), input_precision=PREC), axis=1)
            dW2n += gW
            dS2n += gS
            dX2 += gX
            dA2 += gA
            dU = dHr * _act_grad(U, ACT)  # [BT, BH]
            dQ1, gW1, gS1, gX1, gA1, gw1, gb1, gd1 = _dual_bwd(rb, rd, rw1, W1, S1, K, X1, Q, dU,
                                                               MOM, PREC)  # fmt: skip
            if ANCHOR:
                gU = cb[:, None] * dU  # [BT, BH]
                dQ1 += tl.dot(gU, AN1, input_precision=PREC)
                dAN1 += tl.dot(tl.trans(gU), Q, input_precision=PREC)
                gb1 -= tl.sum(dU * QA, axis=1)
            dQ += dQ1
            dW1n += gW1
            dS1n += gS1
            dX1 += gX1
            dK += gA1
            if READ == 0:
                dwc1 += gw1
                dwc2 += gw
                db += gb + gb1
                dd += gd + gd1
            else:
                dwp1 += gw1
                dwp2 += gw
                dbp += gb + gb1
                ddp += gd + gd1

        # 3. drives: dgd's x = (I - L)^{-1} rhs (eq. D5); otherwise x is the local error.
        if DGD:
            R1 = tl.dot(tl.trans(Mi1), dX1, input_precision=PREC)  # [BT, BH], d rhs
            R2 = tl.dot(tl.trans(Mi2), dX2, input_precision=PREC)  # [BT, BD]
            dL1 = tl.where(strict, tl.dot(R1, tl.trans(X1), input_precision=PREC), 0.0)
            dL2 = tl.where(strict, tl.dot(R2, tl.trans(X2), input_precision=PREC), 0.0)
            KK = tl.dot(K, tl.trans(K), input_precision=PREC)  # [BT, BT]
            AA = tl.dot(A2, tl.trans(A2), input_precision=PREC)
            dwp1 += dL1 * KK
            dwp2 += dL2 * AA
            G1 = dL1 * wp1
            G2 = dL2 * wp2
            dK += tl.dot(G1 + tl.trans(G1), K, input_precision=PREC)
            dA2 += tl.dot(G2 + tl.trans(G2), A2, input_precision=PREC)
            bR1, bR2 = bp[:, None] * R1, bp[:, None] * R2
            dK += tl.dot(bR1, W1, input_precision=PREC)
            dA2 += tl.dot(bR2, W2, input_precision=PREC)
            dW1n += tl.dot(tl.trans(bR1), K, input_precision=PREC)
            dW2n += tl.dot(tl.trans(bR2), A2, input_precision=PREC)
            dbp += tl.sum(R1 * tl.dot(K, tl.trans(W1), input_precision=PREC), axis=1)
            dbp += tl.sum(R2 * tl.dot(A2, tl.trans(W2), input_precision=PREC), axis=1)
            if ANCHOR:  # the rhs's (1 - b') A_in AN^T
                aR1, aR2 = (1.0 - bp)[:, None] * R1, (1.0 - bp)[:, None] * R2
                dK += tl.dot(aR1, AN1, input_precision=PREC)
                dA2 += tl.dot(aR2, AN2, input_precision=PREC)
                dAN1 += tl.dot(tl.trans(aR1), K, input_precision=PREC)
                dAN2 += tl.dot(tl.trans(aR2), A2, input_precision=PREC)
                dbp -= tl.sum(R1 * tl.dot(K, tl.trans(AN1), input_precision=PREC), axis=1)
                dbp -= tl.sum(R2 * tl.dot(A2, tl.trans(AN2), input_precision=PREC), axis=1)
            if MOM:
                dR1, dR2 = dp[:, None] * R1, dp[:, None] * R2
                dK += tl.dot(dR1, S1, input_precision=PREC)
                dA2 += tl.dot(dR2, S2, input_precision=PREC)
                dS1n += tl.dot(tl.trans(dR1), K, input_precision=PREC)
                dS2n += tl.dot(tl.trans(dR2), A2, input_precision=PREC)
                ddp += tl.sum(R1 * tl.dot(K, tl.trans(S1), input_precision=PREC), axis=1)
                ddp += tl.sum(R2 * tl.dot(A2, tl.trans(S2), input_precision=PREC), axis=1)
            dE1 = R1
            dE = R2
        else:
            dE1 = dX1
            dE = dX2

        # 2. coefficients: undo the row shifts, then w = -theta (.) Mw, sw = -theta (.) Pe.
        db += tl.sum(tl.trans(shift) * dbp[None, :], axis=1)  # db[t] += dbp[t + 1]
        dd += tl.sum(tl.trans(shift) * ddp[None, :], axis=1)
        dwc1 += tl.dot(tl.trans(shift), dwp1, input_precision="ieee")
        dwc2 += tl.dot(tl.trans(shift), dwp2, input_precision="ieee")
        dwc1 = tl.where(lower, dwc1, 0.0)
        dwc2 = tl.where(lower, dwc2, 0.0)
        dMw = -th1[None, :] * dwc1 - th2[None, :] * dwc2  # [BT, BT]
        dth1 = -tl.sum(dwc1 * Mw, axis=0)  # [BT]
        dth2 = -tl.sum(dwc2 * Mw, axis=0)
        if MOM:
            dPe = -th1[None, :] * dsw1 - th2[None, :] * dsw2
            dth1 -= tl.sum(dsw1 * Pe, axis=0)
            dth2 -= tl.sum(dsw2 * Pe, axis=0)
            dPr = dd[:, None] * sb[None, :] + tl.dot(dMw, tl.trans(Pe), input_precision=PREC)
            dPe += tl.dot(tl.trans(Pr), dMw, input_precision=PREC)
            dsb += tl.sum(Pr * dd[:, None], axis=0)
            d_eta = _segments_bwd(Pe, dPe, dsb, _prev(sb, idx, 1.0), shift, lower, PREC)
        else:
            dPr = dMw
            d_eta = tl.zeros([BT], dtype=tl.float32)
        dr = _segments_bwd(Pr, dPr, db, bp, shift, lower, PREC)
        if PROX:  # th_l = th / (1 + th n_l), n_l = ||a_l||^2
            n1 = tl.sum(K * K, axis=1)
            n2 = tl.sum(A2 * A2, axis=1)
            f1 = 1.0 / (1.0 + th * n1)
            f2 = 1.0 / (1.0 + th * n2)
            dth = dth1 * f1 * f1 + dth2 * f2 * f2
            dK += (-2.0 * dth1 * th * th * f1 * f1)[:, None] * K
            dA2 += (-2.0 * dth2 * th * th * f2 * f2)[:, None] * A2
        else:
            dth = dth1 + dth2

        # 1. write pass (B1-B3): E1 = (E W2) (.) s'(Z), E = K + Y2 - V (with the norm:
        # E = B2(K + LN(Y2) - V)), Y2 = s(Z) W2^T, Z = K W1^T.
        dEW2 = dE1 * sZ  # [BT, BH]
        dE += tl.dot(dEW2, tl.trans(W2), input_precision=PREC)
        dW2n += tl.dot(tl.trans(E), dEW2, input_precision=PREC)
        dZ = dE1 * EW2 * _act_grad2(Z, ACT)
        if NORM:
            dE, dY2 = _norm_error_bwd(dE, E, Gk, Nk, rho, cols, D)  # now d(k - v), dz_2
        else:
            dY2 = dE
        dK += dE
        dA2 += tl.dot(dY2, W2, input_precision=PREC)
        dW2n += tl.dot(tl.trans(dY2), A2, input_precision=PREC)
        dZ += dA2 * sZ
        dK += tl.dot(dZ, W1, input_precision=PREC)
        dW1n += tl.dot(tl.trans(dZ), K, input_precision=PREC)

        tl.store(dq + pd, dQ, mask=mtd)
        tl.store(dk + pd, dK, mask=mtd)
        tl.store(dv + pd, -dE, mask=mtd)
        tl.store(dtheta + row * H + i_h, dth, mask=mt)
        tl.store(dalpha + row * H + i_h, -dr, mask=mt)
        tl.store(deta + row * H + i_h, d_eta, mask=mt)
        GW1, GW2, GS1, GS2 = dW1n, dW2n, dS1n, dS2n
    tl.store(dw1_0 + bh * HD * D + p1, GW1, mask=m1)
    tl.store(dw2_0 + bh * D * HD + p2, GW2, mask=m2)
    if MOM:
        tl.store(ds1_0 + bh * HD * D + p1, GS1, mask=m1)
        tl.store(ds2_0 + bh * D * HD + p2, GS2, mask=m2)
    if ANCHOR:
        tl.store(da1 + bh * HD * D + p1, dAN1, mask=m1)
        tl.store(da2 + bh * D * HD + p2, dAN2, mask=m2)


def backward(options, read: str, saved: list, starts: list, ups: list):
    """Gradients of q, k, v, theta, eta, alpha, the initial weights and momentum, and the
    anchor (float32; None for a momentum or anchor the call did not have).

    saved: the forward's inputs (q, k, v, theta, eta, alpha, w1, w2, s1, s2, a1, a2); starts: the
    chunk-start states the forward wrote, [B, H, N, out, in] each (momentum ones with a
    momentum rule); ups: the upstream gradients (do, dw1, dw2, ds1, ds2), None where absent.
    """
    from .structure import ACTIVATIONS
    from .triton import READ_CODES, num_warps

    q, k, v, theta, eta, alpha, w1, w2, s1, s2, a1, a2 = saved
    do, dw1, dw2, ds1, ds2 = ups
    st = options.structure
    B, T, H, D = q.shape
    HD, C = st.hidden, options.chunk_size
    N = -(-T // C)
    BT, BD, BH = ts.block(C), ts.block(D), ts.block(HD)
    mom = options.has_momentum
    dev, f32 = q.device, torch.float32
    grads = [ts.new_output(x.shape, f32, dev) for x in (q, k, v, theta, eta, alpha)]
    g0 = [ts.new_output((B, H, *w.shape[-2:]), f32, dev) for w in (w1, w2)]
    gs0 = [ts.new_output((B, H, *w.shape[-2:]), f32, dev) for w in (w1, w2)] if mom else g0
    anchored = a1 is not None
    ga0 = [ts.new_output((B, H, *w.shape[-2:]), f32, dev) for w in (w1, w2)] if anchored else g0
    # One of a pair of upstream state gradients may be None (the other output unused).
    if dw1 is not None or dw2 is not None:
        dw1, dw2 = (torch.zeros_like(w1) if g is None else g for g in (dw1, dw2))
    if mom and (ds1 is not None or ds2 is not None):
        ds1, ds2 = (torch.zeros_like(w1 if i == 0 else w2) if g is None else g
                    for i, g in enumerate((ds1, ds2)))  # fmt: skip
    dummy = grads[0]

    def arg(x):
        return dummy if x is None else x.contiguous()

    ins = [x.contiguous() for x in (q, k, v, theta, eta, alpha)]
    ss = starts[2:] if mom else starts[:2]
    _bwd_kernel[(B * H,)](
        *ins, starts[0], starts[1], *ss, arg(a1), arg(a2), arg(do), arg(dw1), arg(dw2), arg(ds1),
        arg(ds2), *grads, *g0, *gs0, *ga0, T, N, H=H, D=D, HD=HD, C=C, BT=BT, BD=BD, BH=BH,
        ACT=ACTIVATIONS.index(st.activation), MOM=mom, DGD=options.rule.startswith("dgd"),
        PROX=options.dgd_step == "proximal", READ=READ_CODES[read],
        NORM=st.norm == "layernorm", EPS=st.norm_eps, HAS_DO=do is not None,
        HAS_DW=dw1 is not None, HAS_DS=mom and ds1 is not None, ANCHOR=anchored,
        PREC=ts.dot_precision(q.dtype, _bwd_kernel), num_warps=num_warps(BH, BD),
    )  # fmt: skip
    return grads, g0, (gs0 if mom and s1 is not None else None), (ga0 if anchored else None)
