"""Deep in-context memories (Titans LMM, Hope, Miras): MLP memories learned in context.

``deep_memory(q, k, v, theta, eta, alpha, weights, *, structure, objective='l2', p=3.0,
delta=1.0, rule='gd', retention='l2', q_norm=4.0, kl_scale=1.0, read='write_then_read',
chunk_size=16, momentum=None, output_final_state=False, ns_steps=5, ns_kind='quintic',
window=1, gamma=None, window_prefix=None, dgd_step='explicit', backend=None)`` returns
``(o, final_state)``: q, k [B, T, H, d_in]; v [B, T, H, d_out]; theta (step), eta (momentum
decay), alpha (forget) [B, T, H]; ``weights`` the initial layer states [B, H, out, in]
(logits for kl, ``A`` for lq; see :func:`initial_weights`); ``momentum`` the optional
initial momentum list (rules 'momentum' and 'muon'; ``ns_steps`` and ``ns_kind`` are the
Newton-Schulz iteration of 'muon'; ``window`` > 1 is the Omega rule (Atlas eq. 9): each
update fits the last ``window`` tokens weighted by ``gamma`` [B, T, H] (default 1), with
``window_prefix = (k, v, gamma)`` [B, P <= window - 1, H, ...] the tokens before the first
one, which must start a chunk); ``dgd_step='proximal'`` gives the dgd rules the exact
minimizer's step ``theta / (1 + theta ||a||^2)`` per layer (NL eq. 57); ``final_state = (weights, momentum or None)`` when
``output_final_state`` else None. ``backend`` is 'chunk' (dual form), 'naive' (per-token
loop with autograd gradients) or None: the kernel dispatcher's choice (``backend=``, then
``use_backend``, then ``NESTDSL_KERNEL_BACKEND``, then automatic). Semantics and derivations:
README.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..dispatch import resolve
from .chunk import deep_memory_chunk
from .naive import deep_memory_naive
from .objectives import OBJECTIVES
from .retention import RETENTIONS, visible_weights
from .structure import (
    ACTIVATIONS,
    MOMENTUM_RULES,
    NORMS,
    READS,
    RULES,
    MemoryStructure,
    init_params,
    initial_weights,
    matrix_memory,
    memory_forward,
)


def deep_memory(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor] | None] | None]:
    """Run a deep in-context memory over a sequence (see the module doc for the contract)."""
    return resolve("deep_memory", q.device, backend)(
        q,
        k,
        v,
        theta,
        eta,
        alpha,
        weights,
        structure=structure,
        objective=objective,
        p=p,
        delta=delta,
        rule=rule,
        retention=retention,
        q_norm=q_norm,
        kl_scale=kl_scale,
        read=read,
        chunk_size=chunk_size,
        momentum=momentum,
        output_final_state=output_final_state,
        ns_steps=ns_steps,
        ns_kind=ns_kind,
        window=window,
        gamma=gamma,
        window_prefix=window_prefix,
        dgd_step=dgd_step,
    )


__all__ = [
    "ACTIVATIONS",
    "MOMENTUM_RULES",
    "NORMS",
    "OBJECTIVES",
    "READS",
    "RETENTIONS",
    "RULES",
    "MemoryStructure",
    "deep_memory",
    "deep_memory_chunk",
    "deep_memory_naive",
    "init_params",
    "initial_weights",
    "matrix_memory",
    "memory_forward",
    "visible_weights",
]
