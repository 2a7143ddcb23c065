"""Memory-update kernels: loop references (`naive.py`, the oracles), chunk-parallel torch forms,
and Triton forms (`triton.py`, chosen for CUDA tensors).

Conventions follow flash-linear-attention: q, k `[B, T, H, K]`, v `[B, T, H, V]`, a matrix state
`[B, H, K, V]`, `scale=None` meaning `K ** -0.5`, and every op returns `(o, final_state)`.
`dispatch` picks the implementation by device; `backend=` or `NESTDSL_KERNEL_BACKEND` forces one.
"""

import importlib as _importlib

# The op folders share their names with the public functions. Python sets a subpackage as an
# attribute of this package the first time it is imported, so a lazy import (the dispatcher
# loads backends on first use) would replace `nestdsl.kernels.linear_attention` the function by
# the folder. Importing every op folder here first, before the functions are bound, means no
# later import binds anything on this package.
for _op in ("delta_rule", "linear_attention", "softmax_attention", "titans_linear", "deep_memory"):
    _importlib.import_module(f"{__name__}.{_op}")
del _op

from nestdsl.kernels.api import (  # noqa: E402
    delta_rule,
    gated_delta_rule,
    linear_attention,
    softmax_attention,
)
from nestdsl.kernels.deep_memory import (  # noqa: E402
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory,
)
from nestdsl.kernels.titans_linear import titans_linear  # noqa: E402

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
