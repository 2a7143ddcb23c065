"""Triton deep memory with the memory's layer norm, ``M(x) = x + LN(W_2 s(W_1 x))``.

Titans' LMM (and the other Titans, Moneta, Yaad, Memora memories) normalize the MLP branch
(kernels/deep_memory/README.md eq. B2, §8). The fused forward kernel runs the norm on chip: the
write pass's error goes back through it, and every read is normalized; the fused backward
kernel runs the adjoints (the reads' norm, and the write error's, second-order part included).
Runs in the Triton interpreter (float32, NaN-poisoned buffers) against the float64 loop oracle
``deep_memory_naive``: outputs, final states and the gradients of every input and initial state; also a zero output
layer (rho at eps^(-1/2)) and second-order gradients (the chunk form's recomputation).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from nestdsl.kernels.deep_memory import (
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory_chunk,
    initial_weights,
)

from .helpers import RTOL, assert_close
from .test_triton_deep_memory import READS, RULES, SEQ_INPUTS, B, _check, _inputs
from .triton_interp import fresh_dispatch, interpreter, load  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter")

D = 8
LN = MemoryStructure(D, D, depth=2, expansion=2, activation="gelu", residual=True,
                     norm="layernorm")  # fmt: skip
# One fast crossing per rule (and every read order among them); the rest are slow.
FAST = {("gd", "write_then_read"), ("momentum", "chunk_start"),
        ("dgd", "read_then_write"), ("dgd_momentum", "write_then_read")}  # fmt: skip


def _fused_both_ways(monkeypatch):
    """Both kernels run: no fallback warning, and the backward never recomputes the chunk form
    (the Function's fallback path calls ``triton.deep_memory_chunk``)."""
    tr = load("deep_memory.triton")
    monkeypatch.setattr(tr, "deep_memory_chunk",
                        lambda *a, **kw: pytest.fail("the chunk form ran"))  # fmt: skip
    warnings.simplefilter("error", UserWarning)


@pytest.mark.parametrize(("rule", "read"), [
    pytest.param(rule, read, id=f"{rule}-{read}",
                 marks=() if (rule, read) in FAST else pytest.mark.slow)
    for rule in RULES for read in READS])  # fmt: skip
def test_layernorm_matches_oracle(rule, read, monkeypatch):
    """T = 10 (two full chunks of 4 and a partial one), 2 heads, an initial momentum where the
    rule has one."""
    _fused_both_ways(monkeypatch)
    options = DeepMemoryOptions(LN, rule=rule, chunk_size=4)
    _check(options, 10, read, momentum=options.has_momentum, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["momentum", "dgd_momentum"])
def test_layernorm_shorter_than_a_chunk_without_initial_momentum(rule, monkeypatch):
    """T = 3 < chunk 4 (only a partial chunk), momentum starting at zero."""
    _fused_both_ways(monkeypatch)
    _check(DeepMemoryOptions(LN, rule=rule, chunk_size=4), 3, "write_then_read",
           momentum=False, seed=5)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["dgd", "dgd_momentum"])
def test_layernorm_proximal_step(rule, monkeypatch):
    """dgd's proximal step with the norm; T = 9, not a multiple of the chunk."""
    _fused_both_ways(monkeypatch)
    options = DeepMemoryOptions(LN, rule=rule, dgd_step="proximal", chunk_size=4)
    _check(options, 9, "read_then_write", momentum=options.has_momentum, seed=8)


@pytest.mark.slow
def test_layernorm_odd_widths_and_other_activation(monkeypatch):
    """d = 6 and hidden 12 (padded tiles: the norm must count only the 6 real features), silu."""
    _fused_both_ways(monkeypatch)
    st = MemoryStructure(6, 6, depth=2, expansion=2, activation="silu", norm="layernorm")
    _check(DeepMemoryOptions(st, rule="momentum", chunk_size=4), 7, "write_then_read",
           momentum=True, seed=6)  # fmt: skip


def test_layernorm_claims_both_kernels():
    tr = load("deep_memory.triton")
    bwd = load("deep_memory.triton_backward")
    for rule in RULES:
        options = DeepMemoryOptions(LN, rule=rule)
        assert tr.unsupported(options, torch.float32) is None
        assert bwd.unfused(options) is None


@pytest.mark.slow
def test_layernorm_zero_output_layer(monkeypatch):
    """W_2 = 0 at the start (a fresh memory's output layer): every token's z_2 is 0, so the
    norm runs at rho = eps^(-1/2) and n = 0; the first writes must still match the oracle."""
    _fused_both_ways(monkeypatch)

    def zero_w2(x):
        x["W1"] = torch.zeros_like(x["W1"])  # "W1" is the second matrix, W_2 [d, h]

    _check(DeepMemoryOptions(LN, rule="momentum", chunk_size=4), 6, "read_then_write",
           momentum=False, seed=4, tweak=zero_w2)  # fmt: skip


@pytest.mark.slow
def test_layernorm_second_order_matches_the_chunk_form():
    """create_graph through the layer-normed kernel recomputes the chunk form (its gradients
    differentiable again): the gradient of a functional of first gradients equals the chunk
    form's."""
    tr = load("deep_memory.triton")
    options = DeepMemoryOptions(LN, rule="momentum", chunk_size=4)
    x = _inputs(LN, 6, momentum=True, seed=2)
    gen = torch.Generator().manual_seed(4)
    up = torch.randn(x["q"].shape, generator=gen, dtype=torch.float64)

    def second(fn, dtype):
        leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items()}
        W = initial_weights([leaves["W0"], leaves["W1"]], B)
        o, _ = fn(*(leaves[n] for n in SEQ_INPUTS), W, options,
                  momentum=[leaves["S0"], leaves["S1"]])  # fmt: skip
        (dq,) = torch.autograd.grad(o.square().sum(), [leaves["q"]], create_graph=True)
        return torch.autograd.grad((dq * up.to(dtype)).sum(), [leaves["k"], leaves["W1"]])

    ref, got = second(deep_memory_chunk, torch.float64), second(tr.deep_memory_triton, torch.float32)
    for name, a, b in zip(("k", "W1"), ref, got, strict=True):
        assert a.abs().sum() > 0
        assert_close(f"d2 {name}", a.float(), b, RTOL[torch.float32])
