"""Deep in-context memory, chunk-parallel (dual) form.

README.md §5. Per chunk of C tokens, with the visible weights ``W_{t0}`` at the chunk start:

1. write pass: one batched forward of all C keys at ``W_{t0}`` and the closed-form
   backward (structure.py, README eqs. B1-B4) give every layer's inputs ``a_{l,t}`` and local
   errors ``delta_{l,t}``: the per-token gradients ``delta a^T`` (Nested Learning §4.1);
2. every layer's rule is then a linear recurrence with scalar gates driven by these
   rank-one terms (recurrence.py, eq. D1; dgd solves its drives with one triangular
   solve, eq. D5), so the per-token weights never need to be formed:
3. reads go layer by layer: layer l's per-token read input is the activation of layer
   l-1's per-token read, and ``W_{l,t} r_t`` is a matmul of the dual form (eq. D2);
4. the state at the chunk end (row C of eq. D1) starts the next chunk.

kl / lq retention re-normalize only at chunk ends (Miras §5); inside a chunk their reads see
the chunk-start visible weights plus the chunk's linear updates (README eq. R1: the dual read
with ``W_{t0}`` in the place of the raw state), and write_then_read at a chunk's last token
reads the newly normalized weights. Memora's lag token (Miras eq. 30) makes every chunk two
spans, its first token and the rest; local retention runs the write pass at the decayed
chunk-start weights (README §3).
The Muon rule is not rank one: its per-token momenta and their orthogonalizations are formed
(muon.py), its per-token weights are not.
Python loops run over chunks and layers, never over tokens.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .muon import muon_chunk
from .objectives import objective_grad
from .options import DeepMemoryOptions, MemoryResult, Tensor, Tensors
from .recurrence import (
    ChunkCoefficients,
    apply_rows,
    chunk_coefficients,
    chunk_end,
    dgd_drive,
    read_rows,
)
from .retention import visible_weights
from .structure import forward_layers, layer_errors, memory_forward
from .window import band, extend, weighted_band


def _dual_read(
    coefs: list[ChunkCoefficients],
    rows: slice,
    states: list[torch.Tensor],
    moms: list[torch.Tensor | None],
    inputs: list[torch.Tensor],
    drives: list[torch.Tensor],
    anchors: list[torch.Tensor | None],
    i: int,
    r: torch.Tensor,
) -> torch.Tensor:
    """Layer i applied with its per-token weights: ``W_{i,t} r_t`` for the chosen rows."""
    return apply_rows(coefs[i], rows, states[i], moms[i], inputs[i], drives[i], r, anchors[i])


def deep_memory_chunk(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                      weights: Tensors, options: DeepMemoryOptions, *, read: str = "write_then_read",
                      momentum: Tensors | None = None, output_final_state: bool = False,
                      delta: Tensor | None = None, gamma: Tensor | None = None,
                      window_prefix: Tensors | None = None,
                      omega: Tensor | None = None,
                      anchor: Tensors | None = None) -> MemoryResult:  # fmt: skip
    """The chunk-parallel form of :func:`deep_memory` (the package doc gives the contract;
    the public function has checked the arguments)."""
    o = options
    structure, rule, window = o.structure, o.rule, o.window
    B, T, H, _ = q.shape
    C = o.chunk_size
    N = -(-T // C)
    pad = N * C - T

    # Padded tokens have theta = 0, eta = 1, alpha = 0: no write, no decay. They change
    # nothing before them, their outputs are dropped and the state leaves the last chunk at
    # its last real token (momentum would otherwise keep adding S to W over the padding).
    def chunked(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))  # [B, N*C, H, D]
        return x.transpose(1, 2).reshape(B, H, N, C, x.shape[-1])  # [B, H, N, C, D]

    def chunked_gate(x: torch.Tensor, fill: float) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, pad), value=fill)  # [B, N*C, H]
        return x.transpose(1, 2).reshape(B, H, N, C)  # [B, H, N, C]

    # Every chunked tensor is split into its chunks once (`unbind`): indexing chunk n of the
    # whole tensor inside the loop would make autograd build a zero tensor of the whole size
    # for every chunk's gradient, O(N^2) work in backward (issue 13: titans-lmm lost 57% of
    # its speed from T=512 to 2048); the backward of `unbind` is one `stack`.
    qc = chunked(q).unbind(2)  # N x [B, H, C, D]
    # A per-token Huber threshold [B, T, H] is chunked like the gates (padding never writes).
    dc = chunked_gate(delta, 1.0) if delta is not None else None
    gates = chunked_gate(theta, 0.0), chunked_gate(eta, 1.0), chunked_gate(alpha, 0.0)
    gate_chunks = [g.unbind(2) for g in gates]  # 3 x N x [B, H, C]
    d_chunks = None if dc is None else dc.unbind(2)  # N x [B, H, C]
    # The tokens each chunk learns from: its own, plus the window - 1 before it (window.py).
    pre = window - 1
    if pre == 0 and gamma is None and omega is None:
        kc, vc = chunked(k).unbind(2), chunked(v).unbind(2)

        def written(n: int):
            return kc[n], vc[n], None
    else:
        ke, ve, ge = (F.pad(x.transpose(1, 2), (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
                      for x in extend(k, v, gamma, window, window_prefix))  # fmt: skip

        # Chunk n learns from tokens n C - pre .. n C + C - 1: overlapping windows (`unfold`).
        ke, ve = (x.unfold(2, C + pre, C).transpose(-1, -2).unbind(2) for x in (ke, ve))
        ge = ge.unfold(2, C + pre, C).unbind(2)

        def written(n: int):  # [B, H, C + pre, D] x 2, [B, H, C + pre]
            return ke[n], ve[n], ge[n]
    mix = band(C, window, q) if pre else None  # [C, C + pre], the same for every chunk
    mix_chunks = None
    if omega is not None:  # weights that depend on t: a band per chunk token (window.py)
        om = F.pad(omega, (0, 0, 0, 0, 0, pad)).transpose(1, 2).reshape(B, H, N, C, window)
        mix = weighted_band(om, window)  # [B, H, N, C, C + pre]
        mix_chunks = mix.unbind(2)  # N x [B, H, C, C + pre]
    segments = o.segments()
    # Rows of eq. D1 for every chunk, b [B, H, N, C+1], w [B, H, N, C+1, C]; Muon, dgd's
    # proximal step and the lag token's split chunks build their own per segment.
    coef_all = None
    if rule != "muon" and o.dgd_step != "proximal" and len(segments) == 1:
        coef_all = chunk_coefficients(*gates, rule)
        coef_all = (coef_all.windowed(mix) if mix is not None else coef_all).chunks()

    def visible(states: list[torch.Tensor]) -> list[torch.Tensor]:
        return [visible_weights(s, o.retention, o.q_norm, o.kl_scale) for s in states]

    def run_chunk(n: int, state: list[torch.Tensor], mom: list[torch.Tensor] | None):
        """Chunk n from the state at its start: its outputs and the state at its end."""
        outs = []
        real = C if n < N - 1 else C - pad  # tokens of this chunk that are not padding
        k_n, v_n, g_n = written(n)  # [B, H, C (+ pre), D]
        for s, e in segments:  # one span, or the lag token and the rest (Memora)
            span = slice(s, e)
            row = min(max(real - s, 0), e - s)  # the span's last real token
            q_s = qc[n][:, :, span]  # [B, H, e - s, D]
            k_s, v_s = (k_n, v_n) if (s, e) == (0, C) else (k_n[..., span, :], v_n[..., span, :])
            gates_s = [g[n][:, :, span] for g in gate_chunks]  # 3 x [B, H, e - s]
            frozen = visible(state)  # W_{t0}

            # 1. write pass at the chunk-start weights: inputs a_l and local errors delta_l.
            # Local retention takes token t's gradient at the decayed weights b_t W_{t0}.
            local = o.retention_mode == "local"
            b = torch.cumprod(1.0 - gates_s[2], -1)[..., None] if local else None
            y, cache = forward_layers(structure, partial(_scaled, frozen, b), k_s)
            d_s = o.delta if dc is None else d_chunks[n][:, :, span, None]  # float or [B, H, C, 1]
            dy = objective_grad(y, v_s, o.objective, o.p, d_s)
            dy = dy if g_n is None else g_n[..., None] * dy
            errors = layer_errors(structure, frozen, cache, dy, scale=b)
            inputs = cache.inputs  # L x [B, H, C, in]
            # 2. the rule: how each token's weights read, and the state after the last real token.
            # Reads see W_{t0} plus the span's updates: the dual form with W_{t0} in place of
            # the raw state (the same for l2; for kl / lq the linear in-span update, README §4).
            if rule == "muon":
                mix_n = mix if mix_chunks is None else mix_chunks[n]
                apply, state_e, mom = _muon_layers(gates_s, state, frozen, mom, inputs, errors,
                                                   read, row, o.ns_steps, o.ns_kind, mix_n)  # fmt: skip
            else:
                coef = None if coef_all is None else coef_all[n]
                apply, state_e, mom = _linear_layers(coef, gates_s, o.dgd_step, state, frozen,
                                                     mom, inputs, errors, rule, read, row,
                                                     anchor)  # fmt: skip
            state = state_e

            # 3. reads.
            if read == "chunk_start":
                o_s, _ = memory_forward(structure, frozen, q_s)
            else:
                o_s, _ = forward_layers(structure, apply, q_s)  # [B, H, e - s, d_out]
            if o.retention != "l2" and read == "write_then_read" and row == e - s:
                # kl / lq normalize at a span's end: its last token reads the new weights.
                last, _ = memory_forward(structure, visible(state), q_s[..., -1:, :])
                o_s = torch.cat([o_s[..., :-1, :], last], dim=-2)
            outs.append(o_s)
        return outs, state, mom

    state = list(weights)  # L x [B, H, out, in]
    if anchor is not None:  # often the initial weights expanded over the batch: every chunk's
        anchor = [A.contiguous() for A in anchor]  # reads would copy it for their matmuls
    mom: list[torch.Tensor] | None = None
    if o.has_momentum:
        mom = [torch.zeros_like(w) for w in state] if momentum is None else list(momentum)
    group = o.recompute
    if group and N > group and torch.is_grad_enabled():
        outs, state, mom = _recomputed(run_chunk, N, group, state, mom)
    else:
        outs = []
        for n in range(N):
            outs_n, state, mom = run_chunk(n, state, mom)
            outs += outs_n
    # (`out`, not `o`: run_chunk reads the options `o` again when backward recomputes it)
    out = torch.cat(outs, dim=2)[:, :, :T].transpose(1, 2)  # [B, T, H, d_out]
    return out, ((state, mom) if output_final_state else None)


def _recomputed(run_chunk, N: int, g: int, state, mom):
    """The chunk loop in groups of ``g`` chunks, each under activation checkpointing: autograd
    keeps the state at group starts and the group's inputs, and backward reruns the group's
    chunks (the same ops on the same values, so the same numbers) to get what it drops."""
    L = len(state)

    def group(n0: int, n1: int, *flat: torch.Tensor):
        st, mm = list(flat[:L]), (list(flat[L:]) or None)
        outs = []
        for n in range(n0, n1):
            outs_n, st, mm = run_chunk(n, st, mm)
            outs += outs_n
        return (torch.cat(outs, dim=2), *st, *(mm or []))  # [B, H, (n1 - n0) C, d_out], ...

    outs = []
    for n0 in range(0, N, g):
        o_g, *flat = checkpoint(group, n0, min(N, n0 + g), *state, *(mom or []),
                                use_reentrant=False)  # fmt: skip
        outs.append(o_g)
        state, mom = flat[:L], (flat[L:] or None)
    return outs, list(state), None if mom is None else list(mom)


def _scaled(weights, scale, i: int, a: torch.Tensor) -> torch.Tensor:
    """Layer i of the write pass, ``a W_i^T`` [..., C, out], every token's weights scaled by
    its decay ``scale`` [..., C, 1] under local retention (None: unscaled)."""
    z = a @ weights[i].transpose(-1, -2)
    return z if scale is None else scale * z


def _linear_layers(coef, gates, dgd_step, state, read_from, mom, inputs, errors, rule, read, row,
                   anchor=None):  # fmt: skip
    """Rules whose updates are rank one (gd, momentum, dgd and with momentum): the dual-form
    per-token read (from ``read_from``, the visible chunk-start weights) and the states after
    token ``row`` (README eqs. D1-D5), without forming per-token weights. Without shared
    coefficients ``coef`` they come from the span's ``gates`` (theta, eta, alpha); dgd's
    proximal step has a step size per layer (README eq. D6). With an ``anchor`` A (l2 retention)
    ``W - A`` follows the recurrence, which decays toward 0: every row's chunk-start weights
    are ``b_t W_0 + (1 - b_t) A`` (recurrence.py)."""
    C = gates[0].shape[-1]
    if dgd_step == "proximal":
        theta, eta, alpha = gates
        coefs = [chunk_coefficients(theta / (1.0 + theta * a.square().sum(-1)), eta, alpha, rule)
                 for a in inputs]  # fmt: skip
    else:
        coefs = [coef if coef is not None else chunk_coefficients(*gates, rule)] * len(state)
    moms = [None] * len(state) if mom is None else mom
    anchors = [None] * len(state) if anchor is None else list(anchor)
    if rule.startswith("dgd"):  # drives x_t = W_{t-1} a_t + delta_t (eq. D5)
        drives = [dgd_drive(c, W, a, e, S, A)
                  for c, W, a, e, S, A in zip(coefs, state, inputs, errors, moms, anchors,
                                              strict=True)]  # fmt: skip
    else:
        drives = errors
    rows = read_rows(read, C) if read != "chunk_start" else None
    apply = partial(_dual_read, coefs, rows, read_from, moms, inputs, drives, anchors)
    ends = [chunk_end(c, row, W, S, a, x, A)
            for c, W, S, a, x, A in zip(coefs, state, moms, inputs, drives, anchors, strict=True)]  # fmt: skip
    return apply, [W for W, _ in ends], None if mom is None else [S for _, S in ends]


def _muon_layers(gates, state, read_from, mom, inputs, errors, read, row, ns_steps, ns_kind, band):
    """The Muon rule (muon.py): reads from each layer's chunk with the visible chunk-start
    weights ``read_from`` in the place of the raw state, and the states after ``row``."""
    ends = [muon_chunk(*gates, W, S, a, x, ns_steps, ns_kind, band)
            for W, S, a, x in zip(state, mom, inputs, errors, strict=True)]  # fmt: skip
    rows = read_rows(read, gates[0].shape[-1]) if read != "chunk_start" else None

    def apply(i: int, r: torch.Tensor) -> torch.Tensor:
        return ends[i].read(rows, r, read_from[i])

    return apply, [m.weights(row) for m in ends], [m.momentum(row) for m in ends]
