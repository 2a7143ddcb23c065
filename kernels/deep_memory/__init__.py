"""Deep in-context memories (Titans LMM, Hope, Miras): MLP memories learned in context.

``deep_memory(q, k, v, theta, eta, alpha, weights, options, *, read='write_then_read',
momentum=None, output_final_state=False, delta=None, gamma=None, window_prefix=None,
backend=None)`` returns ``(o, final_state)``. ``options`` is a :class:`DeepMemoryOptions`:
every static choice (structure, objective and its constants, rule and its constants,
retention and its constants, chunk size, Omega window length). The per-token tensors stay
arguments: q, k [B, T, H, d_in]; v [B, T, H, d_out]; theta (step), eta (momentum decay),
alpha (forget) [B, T, H]; ``weights`` the initial layer states [B, H, out, in] (logits for kl,
``A`` for lq; see :func:`initial_weights`); ``momentum`` the optional initial momentum list
(rules with momentum); ``delta`` [B, T, H] a per-token Huber threshold (Yaad's delta_t;
``None``: ``options.delta``); ``gamma`` [B, T, H] the Omega window's token weights (default
1), ``omega`` [B, T, H, window] optional weights of the window's positions that depend on the
token t (``gamma_i^(t) = gamma_i * omega_t[t - i]``, Atlas eq. 9) and ``window_prefix = (k, v, gamma)`` [B, P <= window - 1, H, ...] the tokens before the
first one, which must start a chunk. ``final_state = (weights, momentum or None)`` when
``output_final_state`` else None. ``backend`` is 'chunk' (dual form), 'naive' (per-token
loop with autograd gradients) or None: the kernel dispatcher's choice (``backend=``, then
``use_backend``, then ``NESTDSL_KERNEL_BACKEND``, then automatic). Semantics and
derivations: README.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..dispatch import resolve
from .chunk import deep_memory_chunk
from .naive import deep_memory_naive
from .objectives import OBJECTIVES
from .options import MOMENTUM_RULES, READS, RULES, DeepMemoryOptions, check_inputs
from .retention import RETENTIONS, visible_weights
from .structure import (
    ACTIVATIONS,
    NORMS,
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
    options: DeepMemoryOptions,
    *,
    read: str = "write_then_read",
    momentum: Sequence[torch.Tensor] | None = None,
    output_final_state: bool = False,
    delta: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    window_prefix: Sequence[torch.Tensor] | None = None,
    omega: torch.Tensor | None = None,
    anchor: Sequence[torch.Tensor] | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor] | None] | None]:
    """Run a deep in-context memory over a sequence (see the module doc for the contract)."""
    check_inputs(options, q, k, v, (theta, eta, alpha), weights, momentum, read=read,
                 delta=delta, gamma=gamma, window_prefix=window_prefix, omega=omega,
                 anchor=anchor)  # fmt: skip
    # backends without these never see them
    extra = {k: x for k, x in (("omega", omega), ("anchor", anchor)) if x is not None}
    return resolve("deep_memory", q.device, backend)(
        q, k, v, theta, eta, alpha, weights, options, read=read, momentum=momentum,
        output_final_state=output_final_state, delta=delta, gamma=gamma,
        window_prefix=window_prefix, **extra,
    )  # fmt: skip


__all__ = [
    "ACTIVATIONS",
    "MOMENTUM_RULES",
    "NORMS",
    "OBJECTIVES",
    "READS",
    "RETENTIONS",
    "RULES",
    "DeepMemoryOptions",
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
