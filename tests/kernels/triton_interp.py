"""Run the Triton kernels in the Triton interpreter on the CPU without leaking the setting.

``TRITON_INTERPRET=1`` must be set when a kernel is decorated (when its module is imported)
and while it runs (Triton imports parts of itself lazily at launch and reads the variable
again). :func:`load` imports a kernel module under the variable; the :func:`interpreter`
fixture sets it for one test and restores it afterwards, so no other test sees it. The
fixture also makes every buffer the kernels allocate start as NaN, so an element a kernel
forgets to write fails the comparison with the oracle.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

from .helpers import nan_poisoned

ENV = "TRITON_INTERPRET"


def _forget_compiled_triton() -> None:
    """Drop triton and the kernel modules from sys.modules if they were imported without the
    variable (by the dispatcher, say): triton.language decorates its own helpers (tl.cumsum)
    at import, so only a fresh import runs under the interpreter."""
    tl = sys.modules.get("triton.language")
    if tl is None or type(tl.cumsum).__name__ == "InterpretedFunction":
        return
    for name in list(sys.modules):
        kernel = name.startswith("nestdsl.kernels.") and name.rsplit(".", 1)[-1].startswith(
            "triton")  # triton.py, triton_support.py, deep_memory/triton_backward.py
        python_triton = (name == "triton" or name.startswith("triton.")) and "._C" not in name
        if kernel or python_triton:
            del sys.modules[name]


def load(name: str):
    """Import ``nestdsl.kernels.<name>`` with its kernels decorated for the interpreter."""
    pytest.importorskip("triton")
    old = os.environ.get(ENV)
    os.environ[ENV] = "1"
    try:
        _forget_compiled_triton()
        return importlib.import_module(f"nestdsl.kernels.{name}")
    finally:
        if old is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = old


@pytest.fixture
def interpreter(monkeypatch):
    """TRITON_INTERPRET=1 for this test only; kernel buffers start as NaN."""
    monkeypatch.setenv(ENV, "1")
    load("triton_support")
    from nestdsl.kernels import triton_support

    monkeypatch.setattr(triton_support, "new_output", nan_poisoned)
    torch.manual_seed(0)
    yield


def fresh_dispatch(monkeypatch) -> None:
    """Make the dispatcher look its implementations up again for this test: it may hold Triton
    functions from an earlier, compiled (not interpreted) import."""
    from nestdsl.kernels import dispatch

    fresh = {op: {name: dispatch._Entry(e.target) for name, e in entries.items()}
             for op, entries in dispatch._REGISTRY.items()}  # fmt: skip
    monkeypatch.setattr(dispatch, "_REGISTRY", fresh)


def rand_inputs(B, T, H, K, V, *, h0: bool, dtype=torch.float64):
    """q, k (unit keys, as the shipped specs use), v and an optional initial state."""
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, dtype=dtype)
    s = torch.randn(B, H, K, V, dtype=dtype) if h0 else None
    return q, k, v, s


def as_float32_leaves(xs: dict) -> dict:
    """float32 copies of the float64 oracle inputs, each a leaf that requires grad."""
    return {n: None if x is None else x.detach().float().requires_grad_() for n, x in xs.items()}


def check_against_oracle(call, oracle, triton_fn, inputs: dict, *, rtol: float = 1e-4) -> None:
    """Compare ``triton_fn`` (float32) with ``oracle`` (float64): outputs, final states and the
    gradients of every input that is not None, for random upstream gradients on all of them.

    ``call(fn, xs)`` runs one form on the input dict and returns ``(o, [final states])``.
    """
    from .helpers import assert_close

    ref_in = {n: None if x is None else x.detach().requires_grad_() for n, x in inputs.items()}
    got_in = as_float32_leaves(ref_in)
    o_ref, states_ref = call(oracle, ref_in)
    o, states = call(triton_fn, got_in)
    ups = [torch.randn_like(t) for t in [o_ref, *states_ref]]

    def loss(outs):
        return sum((x * u.to(x.dtype)).sum() for x, u in zip(outs, ups, strict=True))

    names = [n for n, x in ref_in.items() if x is not None]
    g_ref = torch.autograd.grad(loss([o_ref, *states_ref]), [ref_in[n] for n in names])
    g_got = torch.autograd.grad(loss([o, *states]), [got_in[n] for n in names])
    assert_close("o", o_ref.float(), o, rtol)
    for i, (a, b) in enumerate(zip(states_ref, states, strict=True)):
        assert_close(f"final state {i}", a.float(), b, rtol)
    for name, a, b in zip(names, g_ref, g_got, strict=True):
        assert_close(f"d{name}", a.float(), b, rtol)
