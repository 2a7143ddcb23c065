"""Memory-update kernels: loop references (`naive.py`, the oracles) and chunk-parallel torch forms.

Conventions follow flash-linear-attention: q, k `[B, T, H, K]`, v `[B, T, H, V]`, a matrix state
`[B, H, K, V]`, `scale=None` meaning `K ** -0.5`, and every op returns `(o, final_state)`.
`dispatch` picks the implementation by device; `backend=` or `NESTDSL_KERNEL_BACKEND` forces one.
"""

from nestdsl.kernels.api import delta_rule, gated_delta_rule, linear_attention, softmax_attention
from nestdsl.kernels.deep_memory import DeepMemoryOptions, MemoryStructure, deep_memory
from nestdsl.kernels.titans_linear import titans_linear

__all__ = [
    "DeepMemoryOptions",
    "MemoryStructure",
    "deep_memory",
    "delta_rule",
    "gated_delta_rule",
    "linear_attention",
    "softmax_attention",
    "titans_linear",
]
