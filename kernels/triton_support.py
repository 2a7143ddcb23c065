"""Shared pieces of the Triton backend: launch checks, block sizes, buffers, a triangular inverse.

Every ``kernels/<op>/triton.py`` imports this module (and so ``triton``); nothing else in
nestdsl does, and the dispatcher registers the Triton forms as lazy import paths, so importing
nestdsl never requires Triton. The Triton kernels load their operands as float32, compute in
float32 (``tl.dot`` in IEEE float32 or tf32 by input dtype, :func:`dot_precision`) and store
in the input dtype; float64 inputs (and head sizes over ``MAX_HEAD_DIM``)
run the torch chunk form instead (:func:`fallback_reason` says why).

Tests run the kernels in the Triton interpreter on the CPU (``TRITON_INTERPRET=1`` when the
kernel module is imported and while it runs); :func:`check_launch` lets CPU tensors through
only to interpreted kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# tl.dot precision. None picks per input dtype (:func:`dot_precision`); "ieee" or "tf32"
# forces one (benchmarks/bench_triton.py --dot).
DOT_PRECISION: str | None = None

# The per-program state tile is [BK, BV] with the whole key dimension in one block (the rows of
# a matrix-memory state are coupled by k k^T); beyond 256 it no longer fits in registers.
MAX_HEAD_DIM = 256

# Largest value tile per program: the value columns of a matrix memory evolve independently,
# so V is split across programs in tiles of at most this many columns.
MAX_VALUE_BLOCK = 64


def interpreted(kernel: object) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_launch(op: str, kernel: object, *tensors: torch.Tensor | None) -> None:
    """Raise a ``ValueError`` that says what to do when ``kernel`` cannot run on ``tensors``."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        found = sorted(map(str, devices))
        raise ValueError(f"{op}: all tensors must be on one device, got {found}")
    device = devices.pop()
    if device.type != "cuda" and not interpreted(kernel):
        raise ValueError(
            f"{op}: the triton backend runs on CUDA tensors, got tensors on {device}; "
            "use backend='chunk' on the CPU (the automatic choice), or set TRITON_INTERPRET=1 "
            "before importing triton to run the kernels in the Triton interpreter"
        )


def fallback_reason(dtype: torch.dtype, *head_dims: int) -> str | None:
    """Why the Triton form does not run these inputs (the chunk form runs them), or None."""
    if dtype == torch.float64:
        return "float64 inputs: the Triton kernels compute in float32"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {dtype}: the Triton kernels take float32, float16 or bfloat16"
    if max(head_dims) > MAX_HEAD_DIM:
        return f"head size {max(head_dims)} > {MAX_HEAD_DIM}: the state tile would not fit"
    return None


def dot_precision(dtype: torch.dtype, kernel: object) -> str:
    """The ``input_precision`` of the kernels' ``tl.dot`` for inputs of ``dtype``.

    float32 inputs get "ieee": full float32 products, so the Triton forms agree with the chunk
    forms to float32 rounding (tf32 would cost ~1e-3 relative). bfloat16 / float16 inputs get
    "tf32": their values are exact in tf32, the tensor cores do the products, and the FMA form
    of an IEEE product keeps both [64, 64] operands in registers (ptxas spills ~20 KB per thread
    for the linear attention forward at K = 64, sm_90; tf32: 0.4 KB). The interpreter
    implements "ieee" only.
    """
    if interpreted(kernel):
        return "ieee"
    if DOT_PRECISION is not None:
        return DOT_PRECISION
    return "ieee" if dtype == torch.float32 else "tf32"


def block(n: int, low: int = 16) -> int:
    """The power-of-two block covering ``n`` (at least ``low``: tl.dot needs 16 per side)."""
    return max(low, triton.next_power_of_2(n))


def num_warps(BK: int, BV: int) -> int:
    """Warps per program: 8 once the state tile reaches 64 x 64, to spread its registers.

    Chosen offline (no GPU here): ptxas for sm_90 (``bench_triton.py --compile-only``) spilled
    2.0 KB per thread instead of 3.4 KB in the delta rule forward at K = V = 64, BT = 64, and
    0.3 KB instead of 0.8 KB at BT = 32. To be re-tuned on a GPU.
    """
    return 8 if BK * BV >= 64 * 64 else 4


def value_block(V: int) -> int:
    """Value-tile width for a value size V."""
    return min(block(V), MAX_VALUE_BLOCK)


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a buffer every element of which a kernel writes.

    Uninitialized on purpose; the tests replace this function with one that fills the buffer
    with NaN, so an element a kernel forgets to write fails the comparison with the oracle.
    """
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def unit_lower_inverse(A, BT: tl.constexpr):
    """``(I + A)^{-1}`` for a strictly lower-triangular ``A`` [BT, BT], by forward substitution.

    Row i of the inverse is ``e_i - sum_{j < i} A[i, j] row_j``; rows are finished in order, so
    each step reads only finished rows. O(BT^3) scalar work, no division.
    """
    rows = tl.arange(0, BT)
    inv = (rows[:, None] == rows[None, :]).to(tl.float32)  # [BT, BT], identity
    for i in range(1, BT):
        a_i = tl.sum(tl.where(rows[:, None] == i, A, 0.0), axis=0)  # [BT], row i of A
        step = tl.sum(a_i[:, None] * inv, axis=0)  # [BT], sum_j A[i, j] inv[j, :]
        inv = tl.where(rows[:, None] == i, inv - step[None, :], inv)
    return inv
