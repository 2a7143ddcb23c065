"""Per-layer linear recurrences of an in-context memory, in chunk (dual) form.

Every rule of README.md §3 updates one weight matrix ``W`` [out, in] of the memory with
scalar gates per token and rank-one drives ``x_i a_i^T`` (Nested Learning §4.1: the
gradient of a layer is its local error times its input). Inside a chunk, with tokens
numbered ``1..C`` and ``0`` standing for the chunk start, every rule unrolls to

    W_t = b_t W_0 + d_t S_0 + sum_{i <= t} w_{t,i} x_i a_i^T           (README eq. D1)

(``S_0`` the momentum at the chunk start). This module builds the coefficient rows
``b, d, w`` for ``t = 0..C`` from the gates without a loop over tokens and without dividing
by cumulative products (which reach 0 when ``eta = 0`` or ``alpha = 1``), solves the
delta-rule drive ``x`` of ``dgd`` with one triangular solve (WY / UT form, README eq. D5),
and reads / finalizes the weights with matmuls. The linear Titans memory (Titans §3.2) is the
depth-1 case and reuses these coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


def segment_products(r: torch.Tensor) -> torch.Tensor:
    """Products of the gates over token segments of a chunk.

    r: [..., C] per-token factors of one chunk. Returns ``P`` [..., C+1, C+1] with
    ``P[t, j] = prod_{j < l <= t} r_l`` for ``0 <= j <= t <= C`` (1 on the diagonal) and 0
    above it. Built with one masked cumprod, so a zero gate gives exact zeros instead of
    the 0/0 a ratio of cumulative products would produce.
    """
    C = r.shape[-1]
    r_ext = torch.cat([torch.ones_like(r[..., :1]), r], dim=-1)  # [..., C+1], index 0 = start
    idx = torch.arange(C + 1, device=r.device)
    after = idx[None, :] > idx[:, None]  # [C+1 (j), C+1 (l)], l > j
    factors = torch.where(after, r_ext[..., None, :], torch.ones_like(r_ext)[..., None, :])
    Q = torch.cumprod(factors, dim=-1)  # [..., j, t] = prod_{j < l <= t} r_l for t >= j
    return Q.transpose(-1, -2).tril()  # [..., t, j]


@dataclass(frozen=True)
class ChunkCoefficients:
    """Coefficients of eq. D1 for all chunks at once (leading dims ``...`` = [B, H, N]).

    b: [..., C+1] weight of ``W_0`` in ``W_t``; d: [..., C+1] weight of ``S_0`` (None without
    momentum); w: [..., C+1, C] weight of token i's drive in ``W_t`` (``-theta_i`` folded in);
    s_b: [..., C+1] and s_w: [..., C+1, C]: the same for the momentum ``S_t``.
    """

    b: torch.Tensor
    d: torch.Tensor | None
    w: torch.Tensor
    s_b: torch.Tensor | None = None
    s_w: torch.Tensor | None = None

    def windowed(self, band: torch.Tensor) -> ChunkCoefficients:
        """Coefficients on the drives of the C + c - 1 tokens of an Omega window (window.py):
        token j's drive is ``sum_e band[j, e] x_e a_e^T``, so ``w`` becomes ``w @ band``."""
        s_w = None if self.s_w is None else self.s_w @ band
        return ChunkCoefficients(b=self.b, d=self.d, w=self.w @ band, s_b=self.s_b, s_w=s_w)

    def chunks(self) -> list[ChunkCoefficients]:
        """The coefficients of every chunk (the chunk dim, the third of [B, H, N, ...], split
        once: selecting chunk n from the whole tensors in a loop costs O(N) in backward)."""
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        split = {k: None if t is None else t.unbind(2) for k, t in parts.items()}
        N = self.b.shape[2]
        return [ChunkCoefficients(**{k: None if t is None else t[n] for k, t in split.items()})
                for n in range(N)]  # fmt: skip

    def chunk(self, n: int) -> ChunkCoefficients:
        """Coefficients of chunk n (drops the chunk dim, the third of [B, H, N, ...])."""
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        return ChunkCoefficients(**{k: None if t is None else t[:, :, n] for k, t in parts.items()})


def chunk_coefficients(
    theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor, rule: str
) -> ChunkCoefficients:
    """Coefficients of eq. D1 for ``rule`` in {gd, momentum, dgd, dgd_momentum}; gates [..., C].

    gd / dgd:  W_t = r_t W_{t-1} - theta_t x_t a_t^T       (r = 1 - alpha)
        -> b_t = P^r[t, 0],  w_{t,i} = -theta_i P^r[t, i]
    momentum:  S_t = eta_t S_{t-1} - theta_t x_t a_t^T,  W_t = r_t W_{t-1} + S_t
        -> W_t = P^r[t,0] W_0 + sum_{1<=j<=t} P^r[t,j] S_j; substituting
           S_j = P^eta[j,0] S_0 + sum_i P^eta[j,i] (-theta_i) x_i a_i^T turns the double sum
           into one matmul of the two segment-product matrices (README eq. D3).
    For dgd the drive ``x`` is not the raw local error; see :func:`dgd_drive`. dgd_momentum
    is momentum driven by the dgd drive.
    """
    neg_theta = -theta.unsqueeze(-2)  # [..., 1, C]
    Pr = segment_products(1.0 - alpha)  # [..., C+1, C+1]
    b = Pr[..., :, 0]  # [..., C+1]
    if rule in ("gd", "dgd"):
        return ChunkCoefficients(b=b, d=None, w=Pr[..., :, 1:] * neg_theta)
    if rule not in ("momentum", "dgd_momentum"):
        raise ValueError(f"unknown rule {rule!r}")
    Pe = segment_products(eta)  # [..., C+1, C+1]
    # Column 0 of P^r multiplies W_0, not a momentum term: drop it before composing.
    Pr_s = torch.cat([torch.zeros_like(Pr[..., :, :1]), Pr[..., :, 1:]], dim=-1)
    Cm = Pr_s @ Pe  # [..., C+1, C+1]; column 0 = weight of S_0, columns 1.. = of token drives
    return ChunkCoefficients(
        b=b,
        d=Cm[..., :, 0],
        w=Cm[..., :, 1:] * neg_theta,
        s_b=Pe[..., :, 0],
        s_w=Pe[..., :, 1:] * neg_theta,
    )


def dgd_drive(
    coef: ChunkCoefficients,
    W0: torch.Tensor,
    a: torch.Tensor,
    delta: torch.Tensor,
    S0: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Drive ``x_t = W_{t-1} a_t + delta_t`` of delta gradient descent (README eq. D5).

    dgd: ``W_t = W_{t-1} (r_t I - theta_t a_t a_t^T) - theta_t delta_t a_t^T
               = r_t W_{t-1} - theta_t (W_{t-1} a_t + delta_t) a_t^T``,
    i.e. eq. D1 with drive ``x_t``, which depends on the earlier drives through ``W_{t-1}``:
    ``x_t - sum_{i<t} w_{t-1,i} (a_t . a_i) x_i = b_{t-1} W_0 a_t (+ d_{t-1} S_0 a_t) + delta_t``,
    a unit lower-triangular system solved at once (the UT transform of the delta rule). With
    momentum (dgd_momentum) the same drive feeds the momentum, and ``S_0`` enters through d.

    W0, S0: [..., out, in]; a: [..., C, in]; delta: [..., C, out]; coefficients for one chunk
    (b [..., C+1], w [..., C+1, C]); ``anchor`` A: see :func:`apply_rows`. Returns x [..., C, out].
    """
    L = coef.w[..., :-1, :] * (a @ a.transpose(-1, -2))  # [..., C, C], strictly lower
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    rhs = _start_read(coef.b[..., :-1, None], W0, anchor, a) + delta  # [..., C, out]
    if coef.d is not None and S0 is not None:
        rhs = rhs + coef.d[..., :-1, None] * (a @ S0.transpose(-1, -2))
    return torch.linalg.solve_triangular(eye - L, rhs, upper=False, unitriangular=True)


def read_rows(read: str, C: int) -> slice:
    """Rows of eq. D1 each read order uses: ``W_t`` (write_then_read) or ``W_{t-1}``."""
    if read == "write_then_read":
        return slice(1, C + 1)
    if read == "read_then_write":
        return slice(0, C)
    raise ValueError(f"read {read!r} has no per-token rows")


def _start_read(b: torch.Tensor, W0: torch.Tensor, anchor: torch.Tensor | None,
                r: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``(b_t W0 + (1 - b_t) A) r_t`` [..., C, out]: the chunk-start part of eq. D1's rows, with
    the anchor's share read by a matmul of its own (no weight-sized ``W0 - A`` is formed)."""
    z = b * (r @ W0.transpose(-1, -2))
    return z if anchor is None else z + (1.0 - b) * (r @ anchor.transpose(-1, -2))


def apply_rows(
    coef: ChunkCoefficients,
    rows: slice,
    W0: torch.Tensor,
    S0: torch.Tensor | None,
    a: torch.Tensor,
    x: torch.Tensor,
    r: torch.Tensor,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token read ``W_t r_t`` of eq. D1 without forming any ``W_t`` (dual form, eq. D2).

    W0, S0: [..., out, in]; a: [..., C, in] drive inputs; x: [..., C, out] drives;
    r: [..., C, in] read inputs (one per row). Returns [..., C, out]. An ``anchor`` A
    [..., out, in] (retention toward A: ``W_t - A`` follows eq. D1) adds ``(1 - b_t) A`` to
    every row's chunk-start weights.
    """
    z = _start_read(coef.b[..., rows, None], W0, anchor, r)  # [..., C, out]
    if coef.d is not None and S0 is not None:
        z = z + coef.d[..., rows, None] * (r @ S0.transpose(-1, -2))
    scores = (r @ a.transpose(-1, -2)) * coef.w[..., rows, :]  # [..., C, C], causal via w
    return z + scores @ x


def chunk_end(
    coef: ChunkCoefficients,
    row: int,
    W0: torch.Tensor,
    S0: torch.Tensor | None,
    a: torch.Tensor,
    x: torch.Tensor,
    anchor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights and momentum after token ``row`` of the chunk (row of eq. D1), [..., out, in].

    ``row`` is C except in a padded last chunk: padding is neutral for ``S`` (eta = 1,
    theta = 0) but not for ``W`` under momentum (``W_t = W_{t-1} + S_t`` keeps adding ``S``),
    so the final state is read at the last real token instead of the padded chunk end.
    An ``anchor`` A gives ``A + b (W0 - A)`` (one ``lerp``) in the place of ``b W0``.

    Each term is one fused op on a tensor of the chunk end's own (``lerp`` or a product, then
    ``addcmul_`` and ``baddbmm_`` in place): on a CPU a pass over weight-sized tensors costs as
    much as the chunk's matmuls on its 16 tokens (docs/benchmarks.md, session 15).
    """
    lead, (out, inp) = x.shape[:-2], W0.shape[-2:]

    def flat(t: torch.Tensor) -> torch.Tensor:  # [..., out, in] or [..., 1, 1] -> [N, ., .]
        return t.expand(*lead, *t.shape[-2:]).reshape(-1, *t.shape[-2:])

    b = flat(coef.b[..., row, None, None])
    W = b * flat(W0) if anchor is None else torch.lerp(flat(anchor), flat(W0), b)
    if coef.d is not None and S0 is not None:
        W.addcmul_(flat(coef.d[..., row, None, None]), flat(S0))
    _add_outer_(W, x * coef.w[..., row, :, None], a)
    if coef.d is None:
        return W.view(*lead, out, inp), None
    xs = x * coef.s_w[..., row, :, None]
    if S0 is None:
        S = xs.transpose(-1, -2) @ a  # [..., out, in]
    else:
        S = flat(coef.s_b[..., row, None, None]) * flat(S0)
        _add_outer_(S, xs, a)
    return W.view(*lead, out, inp), S.view(*lead, out, inp)


def _add_outer_(W: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> None:
    """``W += x^T a`` in place, one batched matmul: W [N, out, in] (a tensor of its own, which no
    backward reads), x [..., C, out], a [..., C, in] with N the product of ``...``. In W's
    dtype: under autocast the state stays float32."""
    xt = x.transpose(-1, -2).reshape(W.shape[0], W.shape[1], x.shape[-2]).to(W.dtype)
    with torch.autocast(W.device.type, enabled=False):
        W.baddbmm_(xt, a.reshape(W.shape[0], *a.shape[-2:]).to(W.dtype))
