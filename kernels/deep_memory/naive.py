"""Deep in-context memory, per-token loop with autograd gradients: the reference oracle.

README.md §2-§4 one token at a time. At every chunk start the visible weights ``W_{t0}`` are
frozen; each token's gradient of the objective (Miras eqs. 9-12) w.r.t. them comes from
``torch.func.grad`` (generic autograd, independent of the closed-form backward of
structure.py) and drives the rule of every layer:

    gd        W_t = (1 - alpha_t) W_{t-1} - theta_t G_t
    momentum  S_t = eta_t S_{t-1} - theta_t G_t,   W_t = (1 - alpha_t) W_{t-1} + S_t
    dgd       W_t = W_{t-1} ((1 - alpha_t) I - theta_t a_t a_t^T) - theta_t G_t  (NL eq. 57/88)
    dgd_momentum  S_t = eta_t S_{t-1} - theta_t (W_{t-1} a_t a_t^T + G_t),  W_t = (1 - alpha_t) W_{t-1} + S_t

``dgd_step='proximal'`` replaces theta_t, in both dgd rules, by the step of the exact minimizer
of NL eq. 57, ``theta_t / (1 + theta_t ||a_t||^2)``, per layer (its input a_t).
    muon      S_t = eta_t S_{t-1} + G_t,   W_t = (1 - alpha_t) W_{t-1} - theta_t NS_k(S_t)  (Atlas 32)

``W`` here is the layer state (logits for kl, ``A`` for lq). With ``window = c`` (the Omega
rule, Atlas eq. 9) ``G_t`` is the gradient of ``sum_{i=t-c+1..t} gamma_i l(k_i, v_i)``, and with
``omega`` of ``sum_i gamma_i omega_t[t - i] l(k_i, v_i)`` (weights that depend on t).
Local retention takes ``G_t`` at the decayed chunk-start weights ``b_t W_{t0}`` (README §3).
Reads follow README.md §4: kl / lq normalize at boundaries only and read the linear in-chunk
update (eq. R1) in between; Memora's lag token (Miras eq. 30) splits every chunk after its
first token. Slow on purpose.
"""

from __future__ import annotations

import torch

from ..newton_schulz import newton_schulz
from .objectives import objective_loss
from .options import DeepMemoryOptions, MemoryResult, Tensor, Tensors
from .retention import visible_weights
from .structure import memory_forward
from .window import extend, lag_weights


def deep_memory_naive(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                      weights: Tensors, options: DeepMemoryOptions, *, read: str = "write_then_read",
                      momentum: Tensors | None = None, output_final_state: bool = False,
                      delta: Tensor | None = None, gamma: Tensor | None = None,
                      window_prefix: Tensors | None = None,
                      omega: Tensor | None = None,
                      anchor: Tensors | None = None) -> MemoryResult:  # fmt: skip
    """The loop form of :func:`deep_memory`: the oracle (arguments checked by the caller)."""
    o = options
    structure, rule, window, chunk_size, retention = (
        o.structure, o.rule, o.window, o.chunk_size, o.retention)  # fmt: skip
    T = q.shape[1]
    k_ext, v_ext, g_ext = extend(k, v, gamma, window, window_prefix)  # token t at t + window - 1
    state = list(weights)  # L x [B, H, out, in]
    toward = list(anchor) if anchor is not None else [0.0] * len(state)  # what retention decays toward
    mom = None
    if o.has_momentum:
        mom = [torch.zeros_like(w) for w in state] if momentum is None else list(momentum)

    def visible(states: list[torch.Tensor]) -> list[torch.Tensor]:
        return [visible_weights(s, retention, o.q_norm, o.kl_scale) for s in states]

    def read_out(ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return memory_forward(structure, ws, x.unsqueeze(-2))[0].squeeze(-2)  # [B, H, d_out]

    def window_loss(ws, x: torch.Tensor, target: torch.Tensor, d, g) -> torch.Tensor:
        y, _ = memory_forward(structure, ws, x)
        # Summing over (B, H) is harmless: every sequence and head has its own weights.
        return (g * objective_loss(y, target, o.objective, o.p, d)).sum()

    # Where gradients are re-anchored (segment starts) and where kl / lq normalize (segment ends):
    # every chunk, or with Memora's lag token its first token and then the rest (README §4).
    starts = {s for s, _ in o.segments()}
    ends = {e - 1 for _, e in o.segments()}
    outs = []
    for t in range(T):
        if t % chunk_size in starts:
            frozen = visible(state)  # W_{t0}: every gradient of this segment is taken here
            # The reads of the segment see W_{t0} plus its updates: the state plus the decayed
            # difference between the visible and the raw chunk-start state (0 for l2).
            offset = [f - x for f, x in zip(frozen, state, strict=True)]
            decay = 1.0  # prod of the segment's (1 - alpha) so far, for local retention
        q_t = q[:, t]  # [B, H, D]
        k_w, v_w = k_ext[:, t : t + window].transpose(1, 2), v_ext[:, t : t + window].transpose(1, 2)
        g_w = g_ext[:, t : t + window].transpose(1, 2)  # [B, H, window]: tokens t-c+1 .. t
        if omega is not None:  # γ_i^(t) = γ_i omega_t[t - i] (Atlas eq. 9, weights that move with t)
            g_w = g_w * lag_weights(omega[:, t], window)  # [B, H, window]
        d_t = o.delta if delta is None else delta[:, t, :, None, None]  # float or [B, H, 1, 1]
        k_t = k[:, t, :, None, :]  # [B, H, 1, D]
        th = theta[:, t, :, None, None]  # [B, H, 1, 1]
        keep = 1.0 - alpha[:, t, :, None, None]
        decay = decay * keep
        # Local retention takes the gradient at the decayed chunk-start weights (Gated DeltaNet).
        at = [decay * f for f in frozen] if o.retention_mode == "local" else frozen
        grads = torch.func.grad(window_loss)(at, k_w, v_w, d_t, g_w)  # L x [B, H, out, in]

        if read == "read_then_write":
            outs.append(read_out(_plus(state, offset), q_t))

        if rule.startswith("dgd"):
            _, cache = memory_forward(structure, frozen, k_t)
            new_state, new_mom = [], []
            for i, (W, G, a) in enumerate(zip(state, grads, cache.inputs, strict=True)):
                step = th  # [B, H, 1, 1]; the proximal step shrinks it by the input's norm
                if o.dgd_step == "proximal":
                    step = th / (1.0 + th * a.square().sum(-1, keepdim=True))
                a_col = a.transpose(-1, -2)  # [B, H, in, 1]
                A = toward[i]  # retention keeps r W + (1 - r) A: toward A, 0 unless anchored
                if rule == "dgd":
                    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
                    new_state.append(W @ (keep * eye - step * (a_col @ a)) + (1.0 - keep) * A
                                     - step * G)  # fmt: skip
                else:  # dgd_momentum
                    S = eta[:, t, :, None, None] * mom[i] - step * (W @ a_col @ a + G)
                    new_mom.append(S)
                    new_state.append(A + keep * (W - A) + S)
            state, mom = new_state, (new_mom or mom)
        elif rule == "muon":
            mom = [eta[:, t, :, None, None] * S + G for S, G in zip(mom, grads, strict=True)]
            state = [keep * W - th * newton_schulz(S, o.ns_steps, o.ns_kind)
                     for W, S in zip(state, mom, strict=True)]  # fmt: skip
        else:  # gd, momentum: M_t = A + keep (M_{t-1} - A) + update, A = 0 unless anchored
            if rule == "momentum":
                mom = [eta[:, t, :, None, None] * S - th * G for S, G in zip(mom, grads, strict=True)]
                updates = mom
            else:
                updates = [-th * G for G in grads]
            state = [a + keep * (W - a) + U for W, a, U in zip(state, toward, updates, strict=True)]

        offset = [keep * d for d in offset]
        if read == "write_then_read":
            # kl / lq normalize at a segment's last token (a full one: T may end inside it).
            if retention != "l2" and t % chunk_size in ends:
                outs.append(read_out(visible(state), q_t))
            else:
                outs.append(read_out(_plus(state, offset), q_t))
        elif read == "chunk_start":
            outs.append(read_out(frozen, q_t))
    o = torch.stack(outs, dim=1)  # [B, T, H, d_out]
    return o, ((state, mom) if output_final_state else None)


def _plus(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x + y for x, y in zip(xs, ys, strict=True)]
