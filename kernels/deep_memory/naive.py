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
rule, Atlas eq. 9) ``G_t`` is the gradient of ``sum_{i=t-c+1..t} gamma_i l(k_i, v_i)``.
Reads follow README.md §4. Slow on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..newton_schulz import newton_schulz
from .objectives import objective_loss
from .retention import visible_weights
from .structure import MOMENTUM_RULES, MemoryStructure, check_inputs, memory_forward
from .window import extend


def deep_memory_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    weights: Sequence[torch.Tensor],
    *,
    structure: MemoryStructure,
    objective: str = "l2",
    p: float = 3.0,
    delta: float | torch.Tensor = 1.0,
    rule: str = "gd",
    retention: str = "l2",
    q_norm: float = 4.0,
    kl_scale: float = 1.0,
    read: str = "write_then_read",
    chunk_size: int = 16,
    momentum: Sequence[torch.Tensor] | None = None,
    output_final_state: bool = False,
    ns_steps: int = 5,
    ns_kind: str = "quintic",
    window: int = 1,
    gamma: torch.Tensor | None = None,
    window_prefix: Sequence[torch.Tensor] | None = None,
    dgd_step: str = "explicit",
) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor] | None] | None]:
    """Loop form of ``deep_memory`` (same contract as the chunk form, see the package doc)."""
    check_inputs(
        structure,
        q,
        k,
        v,
        (theta, eta, alpha),
        weights,
        momentum,
        rule=rule,
        read=read,
        objective=objective,
        retention=retention,
        chunk_size=chunk_size,
        p=p,
        window=window,
        gamma=gamma,
        window_prefix=window_prefix,
        delta=delta,
        dgd_step=dgd_step,
    )
    T = q.shape[1]
    k_ext, v_ext, g_ext = extend(k, v, gamma, window, window_prefix)  # token t at t + window - 1
    state = list(weights)  # L x [B, H, out, in]
    mom = None
    if rule in MOMENTUM_RULES:
        mom = [torch.zeros_like(w) for w in state] if momentum is None else list(momentum)

    def visible(states: list[torch.Tensor]) -> list[torch.Tensor]:
        return [visible_weights(s, retention, q_norm, kl_scale) for s in states]

    def read_out(ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return memory_forward(structure, ws, x.unsqueeze(-2))[0].squeeze(-2)  # [B, H, d_out]

    def window_loss(ws, x: torch.Tensor, target: torch.Tensor, d, g) -> torch.Tensor:
        y, _ = memory_forward(structure, ws, x)
        # Summing over (B, H) is harmless: every sequence and head has its own weights.
        return (g * objective_loss(y, target, objective, p, d)).sum()

    outs = []
    for t in range(T):
        if t % chunk_size == 0:
            frozen = visible(state)  # W_{t0}: every gradient of this chunk is taken here
        q_t = q[:, t]  # [B, H, D]
        k_w, v_w = k_ext[:, t : t + window].transpose(1, 2), v_ext[:, t : t + window].transpose(1, 2)
        g_w = g_ext[:, t : t + window].transpose(1, 2)  # [B, H, window]: tokens t-c+1 .. t
        d_t = delta[:, t, :, None, None] if torch.is_tensor(delta) else delta  # [B, H, 1, 1]
        grads = torch.func.grad(window_loss)(frozen, k_w, v_w, d_t, g_w)  # L x [B, H, out, in]
        k_t = k[:, t, :, None, :]  # [B, H, 1, D]
        th = theta[:, t, :, None, None]  # [B, H, 1, 1]
        keep = 1.0 - alpha[:, t, :, None, None]

        if read == "read_then_write":
            outs.append(read_out(state if retention == "l2" else frozen, q_t))

        if rule.startswith("dgd"):
            _, cache = memory_forward(structure, frozen, k_t)
            new_state, new_mom = [], []
            for i, (W, G, a) in enumerate(zip(state, grads, cache.inputs, strict=True)):
                step = th  # [B, H, 1, 1]; the proximal step shrinks it by the input's norm
                if dgd_step == "proximal":
                    step = th / (1.0 + th * a.square().sum(-1, keepdim=True))
                a_col = a.transpose(-1, -2)  # [B, H, in, 1]
                if rule == "dgd":
                    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
                    new_state.append(W @ (keep * eye - step * (a_col @ a)) - step * G)
                else:  # dgd_momentum
                    S = eta[:, t, :, None, None] * mom[i] - step * (W @ a_col @ a + G)
                    new_mom.append(S)
                    new_state.append(keep * W + S)
            state, mom = new_state, (new_mom or mom)
        elif rule == "muon":
            mom = [eta[:, t, :, None, None] * S + G for S, G in zip(mom, grads, strict=True)]
            state = [keep * W - th * newton_schulz(S, ns_steps, ns_kind)
                     for W, S in zip(state, mom, strict=True)]  # fmt: skip
        elif rule == "momentum":
            mom = [eta[:, t, :, None, None] * S - th * G for S, G in zip(mom, grads, strict=True)]
            state = [keep * W + S for W, S in zip(state, mom, strict=True)]
        else:
            state = [keep * W - th * G for W, G in zip(state, grads, strict=True)]

        if read == "write_then_read":
            if retention == "l2":
                outs.append(read_out(state, q_t))
            else:  # visible weights move only at chunk ends (README §4)
                at_boundary = (t + 1) % chunk_size == 0
                outs.append(read_out(visible(state) if at_boundary else frozen, q_t))
        elif read == "chunk_start":
            outs.append(read_out(frozen, q_t))
    o = torch.stack(outs, dim=1)  # [B, T, H, d_out]
    return o, ((state, mom) if output_final_state else None)
