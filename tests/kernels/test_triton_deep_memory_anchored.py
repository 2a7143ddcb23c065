"""The fused Triton deep-memory kernels with retention toward the initial state (`anchored`).

``W_t = A + r_t (W_{t-1} - A) + update``: in a chunk, ``W_t = b_t W_{t0} + (1 - b_t) A + ...``,
so the forward adds ``(1 - b_t) A r`` to each layer's read and ``(1 - b) A`` to the chunk-end
state, and the backward kernel carries the adjoint of both (the anchor's own gradient, and the
decay's through ``b``). Run in the Triton interpreter (float32) against torch.autograd through
the per-token loop (float64): outputs, final states and the gradient of every input, the
anchor's included, from a state away from the anchor (a carried one), over two full chunks and
a partial one; the fused backward must run, not the chunk form.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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

B, H, D, T = 2, 2, 8, 10
PLAIN = MemoryStructure(D, D, depth=2, expansion=2, activation="gelu", residual=True)
NORMED = MemoryStructure(D, D, depth=2, expansion=2, activation="gelu", residual=True,
                         norm="layernorm")  # the Titans memory, `x + LN(W_2 s(W_1 x))`
SEQ = ("q", "k", "v", "theta", "eta", "alpha")


def _inputs(structure, *, seed=0):
    """float64: the anchor as per-head parameters [H, out, in] (the model's learned M_0), a
    carried state [B, H, out, in] away from it, a carried momentum, gates with real decay."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {"q": randn(B, T, H, D), "k": F.normalize(randn(B, T, H, D), dim=-1),
         "v": randn(B, T, H, D), "theta": 0.5 * randn(B, T, H).sigmoid(),
         "eta": randn(B, T, H).sigmoid(), "alpha": 0.3 * randn(B, T, H).sigmoid()}  # fmt: skip
    for i, a in enumerate(init_params(structure, H, generator=gen, dtype=torch.float64)):
        x[f"A{i}"] = a
        x[f"W{i}"] = a.expand(B, *a.shape) + 0.3 * randn(B, *a.shape)
        x[f"S{i}"] = 0.1 * randn(B, *a.shape)
    return x


def _run(fn, x, options, read, dtype):
    """Outputs, final states and the gradients of a fixed random functional of them."""
    unused = ("" if options.has_momentum else "S") + ("" if options.anchored else "A")
    leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items() if n[0] not in unused}
    anchor = initial_weights([leaves["A0"], leaves["A1"]], B) if options.anchored else None
    mom = [leaves["S0"], leaves["S1"]] if options.has_momentum else None
    o, (W, S) = fn(*(leaves[n] for n in SEQ), [leaves["W0"], leaves["W1"]], options, read=read,
                   momentum=mom, output_final_state=True, anchor=anchor)  # fmt: skip
    outs = {"o": o, "W0_T": W[0], "W1_T": W[1], **({"S0_T": S[0], "S1_T": S[1]} if mom else {})}
    gen = torch.Generator().manual_seed(1)
    loss = sum((y * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype)).sum()
               for y in outs.values())  # fmt: skip
    names = list(leaves)
    got = torch.autograd.grad(loss, [leaves[n] for n in names], materialize_grads=True)
    return {**outs, **{f"d{n}": g for n, g in zip(names, got, strict=True)}}


# Each rule, read order and structure runs once; the other crossings are slow (the
# interpreter takes a few seconds per forward + backward here).
FAST = {("gd", "write_then_read", "normed"), ("momentum", "read_then_write", "normed"),
        ("momentum", "chunk_start", "plain"), ("momentum", "write_then_read", "plain"),
        ("dgd", "read_then_write", "normed"), ("dgd_momentum", "write_then_read", "plain")}  # fmt: skip
CASES = [pytest.param(rule, read, name, id=f"{rule}-{read}-{name}",
                      marks=() if (rule, read, name) in FAST else pytest.mark.slow)
         for rule in ("gd", "momentum", "dgd", "dgd_momentum")
         for read in ("write_then_read", "read_then_write", "chunk_start")
         for name in ("plain", "normed")]  # fmt: skip


@pytest.mark.parametrize(("rule", "read", "name"), CASES)
def test_fused_kernels_match_the_loop(rule, read, name, monkeypatch):
    tr = load("deep_memory.triton")
    structure = {"plain": PLAIN, "normed": NORMED}[name]
    step = "proximal" if rule.startswith("dgd") else "explicit"  # Hope's memories: the proximal step
    options = DeepMemoryOptions(structure, rule=rule, chunk_size=4, anchored=True, dgd_step=step)
    assert tr.unsupported(options, torch.float32) is None
    walks = []
    bwd = load("deep_memory.triton_backward")
    monkeypatch.setattr(bwd, "backward", lambda *a, f=bwd.backward: (walks.append(1), f(*a))[1])
    monkeypatch.setattr(tr, "deep_memory_chunk", lambda *a, **k: pytest.fail("chunk form ran"))
    x = _inputs(structure)
    got = _run(tr.deep_memory_triton, x, options, read, torch.float32)
    ref = _run(deep_memory_naive, x, options, read, torch.float64)
    assert walks == [1], "the fused backward kernel did not run"
    assert set(got) == set(ref)
    for n, r in ref.items():
        assert_close(f"{n} (vs loop)", r.float(), got[n], RTOL[torch.float32])
    for n in ("dA0", "dA1", "dalpha"):
        assert ref[n].abs().max() > 1e-3, f"{n} is about zero: the check would be empty"


def test_anchor_changes_the_kernel_output():
    """Differential: the same call decaying toward zero gives other reads and states."""
    tr = load("deep_memory.triton")
    x = _inputs(NORMED, seed=3)
    on = DeepMemoryOptions(NORMED, rule="momentum", chunk_size=4, anchored=True)
    off = DeepMemoryOptions(NORMED, rule="momentum", chunk_size=4)
    a = _run(tr.deep_memory_triton, x, on, "write_then_read", torch.float32)
    z = _run(tr.deep_memory_triton, x, off, "write_then_read", torch.float32)
    for n in ("o", "W0_T", "W1_T"):
        assert (a[n] - z[n]).abs().max() > 1e-2, n


def test_uncovered_anchored_memory_runs_the_chunk_form_with_its_anchor():
    """Depth 3 (three weights, momenta and anchors) is not the kernel's: the chunk form runs it,
    anchor and momentum included, and says why."""
    from nestdsl.kernels.deep_memory import deep_memory_chunk

    tr = load("deep_memory.triton")
    deep = MemoryStructure(D, D, depth=3, expansion=2, activation="gelu", residual=True)
    options = DeepMemoryOptions(deep, rule="momentum", chunk_size=4, anchored=True)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, generator=gen) for _ in range(3))
    gates = (0.3 * torch.rand(B, T, H, generator=gen), torch.rand(B, T, H, generator=gen),
             0.2 * torch.rand(B, T, H, generator=gen))  # fmt: skip
    anchor = initial_weights(init_params(deep, H, generator=gen), B)
    W = [a + 0.1 for a in anchor]
    S = [0.1 * torch.ones_like(a) for a in anchor]
    with pytest.warns(UserWarning, match="depth 3"):
        got, (Wg, _) = tr.deep_memory_triton(q, k, v, *gates, W, options, momentum=S,
                                             anchor=anchor, output_final_state=True)  # fmt: skip
    ref, (Wr, _) = deep_memory_chunk(q, k, v, *gates, W, options, momentum=S, anchor=anchor,
                                     output_final_state=True)  # fmt: skip
    assert torch.equal(got, ref) and all(torch.equal(a, b) for a, b in zip(Wg, Wr, strict=True))
