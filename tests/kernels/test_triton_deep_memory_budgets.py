"""The fused deep-memory kernels' tile budgets, and what happens on a GPU with less shared memory.

The budgets come from offline ptxas for sm_90 (benchmarks/bench_triton.py --compile-only):
the anchored forward and the backward of every rule but dgd hold more tiles, so they get half.
`pick_kernels` repeats them without importing torch; here both give one answer for every rule,
anchor and size. A launch the GPU refuses (Triton's OutOfResources, raised before any work)
runs the chunk form instead, forward or backward, with a warning, and gives its numbers.
"""

from __future__ import annotations

import types

import pytest
import torch

from nestdsl.compiler.passes.pick_kernels import triton_backward_tile_budget, triton_tile_budget
from nestdsl.kernels.deep_memory import (
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory_naive,
    init_params,
    initial_weights,
)

from .helpers import RTOL, assert_close
from .triton_interp import interpreter, load  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter")

LN = MemoryStructure(8, 8, depth=2, expansion=2, activation="gelu", residual=True, norm="layernorm")


# every rule the kernels cover, and the anchor where the options allow it (gd, momentum)
VARIANTS = [(r, False) for r in ("gd", "momentum", "dgd", "dgd_momentum")] + [
    ("gd", True), ("momentum", True)]


@pytest.mark.parametrize(("rule", "anchored"), VARIANTS)
def test_pick_kernels_repeats_the_kernels_budgets(rule, anchored):
    tr, bwd = load("deep_memory.triton"), load("deep_memory.triton_backward")
    options = DeepMemoryOptions(LN, rule=rule, anchored=anchored)
    lowered = types.SimpleNamespace(rule=rule, anchored=anchored)
    assert triton_tile_budget(lowered) == tr.tile_budget(options)
    assert triton_backward_tile_budget(lowered) == bwd.tile_budget(options)
    # shipped Titans (d = 32, h = 128: a 4096-element tile) stays fused both ways
    assert tr.tile_budget(options) >= 4096 and bwd.tile_budget(options) >= 4096


def _call(tr, options):
    gen = torch.Generator().manual_seed(0)
    B, T, H, D = 1, 6, 2, 8
    q, v = torch.randn(B, T, H, D, generator=gen), torch.randn(B, T, H, D, generator=gen)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1)
    gates = [0.3 * torch.rand(B, T, H, generator=gen), torch.rand(B, T, H, generator=gen),
             0.2 * torch.rand(B, T, H, generator=gen)]  # fmt: skip
    params = [p.float().requires_grad_() for p in init_params(LN, H, generator=gen)]
    W = initial_weights(params, B)
    anchor = W if options.anchored else None
    outs = {}
    for name, fn in (("triton", tr.deep_memory_triton), ("loop", deep_memory_naive)):
        o, _ = fn(q, k, v, *gates, W, options, anchor=anchor)
        outs[name] = (o, torch.autograd.grad(o.square().sum(), params))
    return outs


class _Refused:
    """A kernel whose every launch fails as Triton's does on a GPU with too little shared
    memory (the error class of the interpreted import the kernels use)."""

    def __init__(self, error):
        self.error = error

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise self.error(240_000, 232_448, "shared memory")

        return launch


def test_a_refused_forward_launch_runs_the_chunk_form(monkeypatch):
    tr = load("deep_memory.triton")
    monkeypatch.setattr(tr, "_fwd_kernel", _Refused(tr.OutOfResources))
    monkeypatch.setattr(load("triton_support"), "check_launch", lambda *a: None)  # not interpreted
    options = DeepMemoryOptions(LN, rule="momentum", chunk_size=4, anchored=True)
    with pytest.warns(UserWarning, match="runs the torch chunk form for out of resource"):
        outs = _call(tr, options)
    assert_close("o", outs["loop"][0], outs["triton"][0], RTOL[torch.float32])
    for ref, got in zip(outs["loop"][1], outs["triton"][1], strict=True):
        assert_close("d initial weights", ref, got, RTOL[torch.float32])


def test_a_refused_backward_launch_runs_the_chunk_form(monkeypatch):
    tr, bwd = load("deep_memory.triton"), load("deep_memory.triton_backward")
    monkeypatch.setattr(bwd, "_bwd_kernel", _Refused(tr.OutOfResources))
    options = DeepMemoryOptions(LN, rule="momentum", chunk_size=4, anchored=True)
    assert bwd.unfused(options) is None  # the fused backward would run
    with pytest.warns(UserWarning, match="triton backward runs the torch chunk form"):
        outs = _call(tr, options)
    assert_close("o", outs["loop"][0], outs["triton"][0], RTOL[torch.float32])
    for ref, got in zip(outs["loop"][1], outs["triton"][1], strict=True):
        assert_close("d initial weights", ref, got, RTOL[torch.float32])
