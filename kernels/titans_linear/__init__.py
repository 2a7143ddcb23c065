"""Titans linear memory with momentum (Titans §3.2): loop reference and chunk-parallel form.

``titans_linear_chunk`` is the chunk form, ``titans_linear_naive`` the per-token oracle, and
``titans_linear`` the kernel dispatcher's choice between them (``backend=``, then
``use_backend``, then ``NESTDSL_KERNEL_BACKEND``, then the chunk form). All take
``(q, k, v, theta, eta, alpha, *, chunk_size=16, scale=None, initial_state=None,
initial_momentum=None, output_final_state=False)``; see README.md for the recurrence.
"""

from __future__ import annotations

import torch

from ..dispatch import resolve
from .chunk import titans_linear_chunk
from .naive import titans_linear_naive


def titans_linear(q: torch.Tensor, *args, backend: str | None = None, **kwargs):
    """The Titans linear memory by the chosen backend (same contract as both forms)."""
    return resolve("titans_linear", q.device, backend)(q, *args, **kwargs)

__all__ = ["titans_linear", "titans_linear_chunk", "titans_linear_naive"]
