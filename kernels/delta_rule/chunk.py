"""Gated delta rule, chunk-parallel PyTorch form (WY representation / UT transform).

The chunk algorithm of Yang et al. (NeurIPS 2024, *Parallelizing Linear Transformers with the
Delta Rule over Sequence Length*) with the decay of Gated DeltaNet, README.md eq. (4)-(12).
Per chunk of C tokens, with the in-chunk cumulative log decay ``G``, the unit lower-triangular
system ``(I + A) [U0 | W] = [diag(b) V | diag(b e^G) K]`` with
``A = tril(diag(b) (K K^T ⊙ e^{G_t - G_i}), -1)`` is batched over all chunks; the only
sequential part is a loop over chunks, not over tokens. Two forms of that loop:

* with autograd (any input requires grad): the WY form ``S_next = M S + D`` (eq. 11), one
  matmul per chunk in the loop, everything else batched (and differentiated) over chunks;
* without autograd (inference): the loop solves for the chunk's new values directly,
  ``(I + A) U = diag(b) V - diag(b e^G) K S``, and computes the chunk's outputs there too
  (eq. 12). Fewer FLOPs, far fewer passes over memory, no tensors kept for backward.
"""

from __future__ import annotations

import math

import torch

from ..linear_attention.chunk import to_chunks

# Inference path: the in-chunk decay is split as e^{G_t - G_i} = e^{G_t - G_C} e^{G_C - G_i}
# (README.md, step 5) when every chunk's total log decay -G_C stays within this fraction of the
# dtype's exponent range (float32: 0.45 * 87.3 = 39.3, float64: 319); otherwise the masked
# decay matrix is formed directly. Setting it to 0 forces the direct form (for testing).
FACTORED_DECAY_RANGE = 0.45
# Inference path: chunks whose length is a multiple of INFERENCE_SUBCHUNK (and larger) are
# processed as sub-chunks of that many tokens. The chunk size does not change the function, only
# the cost: per token, the C x C work (A, P, the solve, P U) grows with C while the state
# products do not; 32 was fastest for K = V = 64 on the benchmark CPU (64: 5-10 % slower).
INFERENCE_SUBCHUNK = 32


def gated_delta_rule_chunk(
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
    """Chunk form of the gated delta rule (``g=None``: plain delta rule).

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g (log decay, <= 0): [B, T, H];
    initial_state: [B, H, K, V]. Returns o [B, T, H, V] and the final state (or None).
    ``chunk_size`` is the chunk length C. With grad mode on and any input requiring grad,
    the WY form runs over chunks of C tokens and keeps per-chunk tensors for backward.
    Otherwise the inference form runs; it processes a chunk whose length is a multiple of
    ``INFERENCE_SUBCHUNK`` (32) as sub-chunks of 32 tokens. Every chunking computes the same
    recurrence, to rounding.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    inputs = (q, k, v, beta, g, initial_state)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        fn = _chunk_autograd
    else:
        fn = _chunk_inference
    return fn(q, k, v, beta, g, scale, initial_state, output_final_state, chunk_size)


def _chunk_autograd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    C: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """WY form, README.md eq. (10)-(11): differentiable, saves O(T C + (T / C) K (K + V))."""
    B, T, H, K = q.shape
    V = v.shape[-1]

    # Padded tokens have k = 0, beta = 0, g = 0: they write nothing, erase nothing and do not
    # decay the state, so the final state is unchanged; their outputs are sliced off.
    qc, kc, vc = to_chunks(q, C), to_chunks(k, C), to_chunks(v, C)  # [B, H, N, C, D]
    bc = to_chunks(beta.unsqueeze(-1), C).squeeze(-1)  # [B, H, N, C]
    N = qc.shape[2]

    ones = torch.ones(C, C, dtype=torch.bool, device=q.device)
    lower = ones.tril()  # [C, C], [t, i] = (i <= t)
    kk = kc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
    qk = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C]

    if g is None:
        decay = lower.to(q.dtype)  # [C, C]
        rhs_k = bc.unsqueeze(-1) * kc  # [B, H, N, C, K]
        q_inter = qc * scale  # [B, H, N, C, K]
        k_out = kc  # [B, H, N, C, K]
        chunk_decay = torch.ones((), dtype=q.dtype, device=q.device)
    else:
        gc = to_chunks(g.unsqueeze(-1), C).squeeze(-1)  # [B, H, N, C]
        G = gc.cumsum(dim=-1)  # [B, H, N, C], log decay from the chunk start, <= 0
        # seg[t, i] = sum_{i < s <= t} g_s = G_t - G_i, summed directly rather than as a
        # difference of cumulative sums, which would cancel catastrophically (float32 error
        # ~ eps |G|) once |G| is large. Every entry is a sum of g <= 0, so exp never overflows.
        strict = ones.tril(-1)  # [C, C], [t, i] = (i < t)
        seg = gc.unsqueeze(-1).expand(*gc.shape, C).masked_fill(~strict, 0.0).cumsum(dim=-2)
        decay = seg.exp().masked_fill(~lower, 0.0)  # [B, H, N, C, C]
        gamma = G.exp().unsqueeze(-1)  # [B, H, N, C, 1]
        rhs_k = (bc.unsqueeze(-1) * gamma) * kc
        q_inter = qc * (gamma * scale)
        k_out = kc * seg[..., -1, :].exp().unsqueeze(-1)  # [B, H, N, C, K], G_last - G_i
        chunk_decay = G[..., -1:].exp().unsqueeze(-1)  # [B, H, N, 1, 1]

    # The unit-triangular solve never reads A's diagonal (and its gradient there is zero),
    # so A may keep the diagonal of the inclusive decay mask.
    A = kk * decay * bc.unsqueeze(-1)  # [B, H, N, C, C]
    P = qk * decay * scale  # [B, H, N, C, C]

    # UT transform, eq. (7): one batched solve for both right-hand sides. Solving the
    # transposed system from the right lets LAPACK use both operands in place (no copies).
    rhs = torch.cat([bc.unsqueeze(-1) * vc, rhs_k], dim=-1)  # [B, H, N, C, V+K]
    X = torch.linalg.solve_triangular(
        A.transpose(-1, -2), rhs.transpose(-1, -2), upper=True, left=False, unitriangular=True
    ).transpose(-1, -2)  # [B, H, N, C, V+K] = [U0 | W]

    # Eq. (10)-(11): everything that does not depend on the chunk's start state is batched
    # over chunks, so the loop below is one small matmul per chunk. X = [U0 | W] is
    # multiplied as a whole: P X = [P U0 | P W] and K~^T X = [D | K~^T W].
    PX = P @ X  # [B, H, N, C, V+K]
    o_intra, q_eff = PX[..., :V], q_inter - PX[..., V:]  # [B, H, N, C, V], [B, H, N, C, K]
    KX = k_out.transpose(-1, -2) @ X  # [B, H, N, K, V+K]
    eye = torch.eye(K, dtype=q.dtype, device=q.device)
    D, M = KX[..., :V], chunk_decay * eye - KX[..., V:]  # [B, H, N, K, V], [B, H, N, K, K]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    S = S.reshape(B * H, K, V)  # [B*H, K, V]
    starts = []
    # unbind so that backward stacks the per-chunk gradients once.
    for M_n, D_n in zip(M.unbind(2), D.unbind(2), strict=True):
        starts.append(S)
        S = torch.baddbmm(D_n.reshape(B * H, K, V), M_n.reshape(B * H, K, K), S)
    S_start = torch.stack(starts, dim=1)  # [B*H, N, K, V]

    o = o_intra + q_eff @ S_start.view(B, H, N, K, V)  # [B, H, N, C, V]
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).contiguous()  # [B, T, H, V]
    return o, (S.reshape(B, H, K, V) if output_final_state else None)


def _new_output(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialized buffer that a kernel fills completely (tests swap in a NaN-filled one)."""
    return like.new_empty(shape)


def _head_chunks(x: torch.Tensor, C: int, N: int, mul=None) -> torch.Tensor:
    """x [B, T, H, D] (times ``mul``: scalar or [B, T, H, 1]) -> [B*H, N, C, D], zero padded.

    One pass: the product is written straight into the transposed, padded layout.
    """
    B, T, H, D = x.shape
    out = _new_output(x, (B, H, N * C, D))
    dst = out[:, :, :T].transpose(1, 2)  # [B, T, H, D] view of the output
    if mul is None:
        dst.copy_(x)
    else:
        torch.mul(x, mul, out=dst)
    if N * C > T:
        out[:, :, T:].zero_()
    return out.view(B * H, N, C, D)


def _chunk_inference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    C: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inference form, README.md eq. (12): no autograd, one loop step per (sub-)chunk."""
    if C > INFERENCE_SUBCHUNK and C % INFERENCE_SUBCHUNK == 0:
        C = INFERENCE_SUBCHUNK  # sub-chunks of the caller's chunks
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = -(-T // C)
    BH = B * H
    dt, dev = q.dtype, q.device
    b4 = beta.unsqueeze(-1)  # [B, T, H, 1]
    lower = torch.ones(C, C, dtype=torch.bool, device=dev).tril()  # [t, i] = (i <= t)

    # Layout [B*H, N, C, D]; padded tokens are zero (k = 0, beta = 0, g = 0), as in the
    # autograd path. Per chunk: Kt = exp(G_C - G_i) k_i (the rows of K~), and the left
    # operands Rl (for U) and Ql (for o), taken with either S_n or DS = exp(G_C) S_n.
    if g is None:
        mode = "plain"
    else:
        Gc = torch.zeros(B, H, N * C, dtype=torch.float64, device=dev)
        Gc[:, :, :T] = g.transpose(1, 2)
        G = Gc.view(BH, N, C).cumsum(-1)  # [BH, N, C], float64: exact to ~1e-16 |G|
        GC = G[..., -1:]  # [BH, N, 1]
        fi = torch.finfo(dt)
        limit = FACTORED_DECAY_RANGE * min(math.log(fi.max), -math.log(fi.tiny))
        mode = "factored" if bool((GC >= -limit).all()) else "direct"
        dec = GC.exp().to(dt).unsqueeze(-1)  # [BH, N, 1, 1], exp(G_C)
    if mode == "direct":
        Kt = _head_chunks(k, C, N)
        Rl = _head_chunks(k, C, N, b4)
        Ql = _head_chunks(q, C, N, scale)
        A = Rl @ Kt.mT  # [BH, N, C, C]
        P = Ql @ Kt.mT
        # Masked decay Gamma[t, i] = exp(G_t - G_i) (i <= t): the difference is taken in
        # float64, where it does not cancel, and rounded once; the upper triangle gets -inf.
        L = G * (1.0 / math.log(2.0))
        Gam = torch.sub(L.unsqueeze(-1), L.unsqueeze(-2), out=torch.empty_like(A))
        Gam += torch.zeros(C, C, dtype=dt, device=dev).masked_fill_(~lower, -math.inf)
        Gam.exp2_()
        A *= Gam
        P *= Gam
        del Gam
        gamma = G.exp().to(dt).unsqueeze(-1)  # [BH, N, C, 1], exp(G_t)
        Rl.mul_(gamma)  # b_t exp(G_t) k_t, with S_n
        Ql.mul_(gamma)  # scale exp(G_t) q_t, with S_n
        Kt.mul_((GC - G).exp().to(dt).unsqueeze(-1))
    else:
        if mode == "factored":
            # exp(G_t - G_i) = exp(G_t - G_C) exp(G_C - G_i): both factors are formed from
            # float64 differences and lie in [1, e^limit] and [e^-limit, 1], so each is exact
            # to a rounding and nothing overflows or underflows. The decay then rides on the
            # matmul operands and no C x C decay matrix is formed.
            def per_token(f: torch.Tensor) -> torch.Tensor:  # [BH, N, C] -> [B, T, H, 1]
                return f.to(dt).view(B, H, N * C)[:, :, :T].transpose(1, 2).unsqueeze(-1)

            up, down = per_token((G - GC).exp()), per_token((GC - G).exp())
            Kt = _head_chunks(k, C, N, down)  # exp(G_C - G_i) k_i
            Rl = _head_chunks(k, C, N, b4 * up)  # b_t exp(G_t - G_C) k_t, with DS
            Ql = _head_chunks(q, C, N, up * scale)  # scale exp(G_t - G_C) q_t, with DS
        else:
            Kt = _head_chunks(k, C, N)
            Rl = _head_chunks(k, C, N, b4)
            Ql = _head_chunks(q, C, N, scale)
        # A = diag(b) (K K^T ⊙ Gamma) strictly below the diagonal, P = scale (Q K^T ⊙ Gamma)
        # on and below it. The triangular solve reads nothing else of A (whose upper part is
        # finite: at most e^limit times |k|^2).
        A = Rl @ Kt.mT  # [BH, N, C, C]
        P = Ql @ Kt.mT
        P *= lower.to(dt)
    RV = _head_chunks(v, C, N, b4)  # diag(b) V

    # Eq. (12), one step per chunk: (I + A) U = diag(b) V - Rl S', o = Ql S' + P U and
    # S_next = exp(G_C) S + K~^T U, with S' = DS = exp(G_C) S_n (factored) or S_n. The
    # solve runs on the transposed, right-hand form, which LAPACK reads in place.
    O = q.new_empty(N, BH, C, V)
    S = q.new_zeros(BH, K, V) if initial_state is None else initial_state.reshape(BH, K, V)
    DS = q.new_empty(BH, K, V)
    R = q.new_empty(BH, C, V)
    U = q.new_empty(BH, C, V)
    # Per-chunk views, taken once (indexing in the loop costs more than the small ops).
    steps = zip(
        RV.unbind(1), Rl.unbind(1), A.mT.unbind(1), Ql.unbind(1), P.unbind(1),
        Kt.mT.unbind(1), O.unbind(0), dec.unbind(1) if mode != "plain" else [None] * N,
    )  # fmt: skip
    for RV_n, Rl_n, At_n, Ql_n, P_n, KtT_n, O_n, dec_n in steps:
        if mode == "plain":
            DS = S
        else:
            torch.mul(S, dec_n, out=DS)
        Sl = S if mode == "direct" else DS
        torch.baddbmm(RV_n, Rl_n, Sl, alpha=-1, out=R)
        torch.linalg.solve_triangular(
            At_n, R.mT, upper=True, left=False, unitriangular=True, out=U.mT
        )  # U^T (I + A)^T = R^T
        torch.bmm(Ql_n, Sl, out=O_n)
        O_n.baddbmm_(P_n, U)
        S = torch.baddbmm(DS, KtT_n, U)

    o = q.new_empty(B, T, H, V)
    src = O.view(N, B, H, C, V).permute(1, 0, 3, 2, 4)  # [B, N, C, H, V]
    full, rest = divmod(T, C)
    if full:
        o[:, : full * C].view(B, full, C, H, V).copy_(src[:, :full])
    if rest:
        o[:, full * C :].copy_(src[:, full, :rest])
    return o, (S.view(B, H, K, V) if output_final_state else None)
