"""Triton deep (MLP) memory against the loop oracle and the chunk form.

Runs in the Triton interpreter on the CPU (float32, H=2, d=8, expansion 2, chunk 4); the
references run in float64. Outputs, final weights / momentum and the gradients of q, k, v, the
gates, the per-head initial parameters and the initial momentum (the fused backward kernel,
triton_backward.py) against torch.autograd through the loop oracle ``deep_memory_naive``;
every kernel buffer starts as NaN (the ``interpreter`` fixture). Also: every rule x read order, T shorter than a chunk and not a
multiple of it, other activations, Hope's self-generated values over two segments, the
fallback to the chunk form (with its reason) for every uncovered option, and the dispatcher.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.deep_memory import (
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory,
    deep_memory_chunk,
    deep_memory_naive,
    init_params,
    initial_weights,
    memory_forward,
)

from .helpers import RTOL, assert_close
from .triton_interp import fresh_dispatch, interpreter, load  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter")

B, H, D = 1, 2, 8
MLP = MemoryStructure(D, D, depth=2, expansion=2, activation="gelu", residual=True)
RULES = ("gd", "momentum", "dgd", "dgd_momentum")
READS = ("write_then_read", "read_then_write", "chunk_start")
TOL = RTOL[torch.float32]
SEQ_INPUTS = ("q", "k", "v", "theta", "eta", "alpha")


def _inputs(structure, T, *, momentum, seed=0):
    """float64 leaves: unit keys, theta in (0, 0.5), eta in (0, 1), alpha in (0, 0.2), per-head
    initial parameters [H, out, in] and optionally an initial momentum [B, H, out, in]."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    d = structure.d_in
    x = {
        "q": randn(B, T, H, d),
        "k": F.normalize(randn(B, T, H, d), dim=-1),
        "v": randn(B, T, H, structure.d_out),
        "theta": 0.5 * randn(B, T, H).sigmoid(),
        "eta": randn(B, T, H).sigmoid(),
        "alpha": 0.2 * randn(B, T, H).sigmoid(),
    }
    for i, p in enumerate(init_params(structure, H, generator=gen, dtype=torch.float64)):
        x[f"W{i}"] = p
        if momentum:
            x[f"S{i}"] = 0.1 * randn(B, *p.shape)
    return x


def _run(fn, x, options, read, dtype, *, grad=True):
    """Outputs, final states and (grad=True) gradients of a fixed random functional of them
    w.r.t. every input. The initial weights are per-head parameters expanded over the batch."""
    leaves = {n: t.detach().to(dtype).requires_grad_(grad) for n, t in x.items()}
    weights = initial_weights([leaves["W0"], leaves["W1"]], B)
    mom = [leaves["S0"], leaves["S1"]] if "S0" in leaves else None
    o, (W, S) = fn(*(leaves[n] for n in SEQ_INPUTS), weights,
                   options, read=read, momentum=mom, output_final_state=True)  # fmt: skip
    outs = {"o": o, "W0_T": W[0], "W1_T": W[1]}
    if S is not None:
        outs.update({"S0_T": S[0], "S1_T": S[1]})
    if not grad:
        return outs
    gen = torch.Generator().manual_seed(1)
    loss = sum((y * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype)).sum()
               for y in outs.values())  # fmt: skip
    names = list(leaves)
    got = torch.autograd.grad(loss, [leaves[n] for n in names], materialize_grads=True)
    return {**outs, **{f"d{n}": g for n, g in zip(names, got, strict=True)}}


def _check(options, T, read, *, momentum, seed=0, tweak=None):
    """Outputs, final states and the gradient of every input and initial state of the Triton
    form (float32, fused forward and backward kernels) against torch.autograd through the loop
    oracle (float64), to relative error 1e-4."""
    tr = load("deep_memory.triton")
    x = _inputs(options.structure, T, momentum=momentum, seed=seed)
    if tweak is not None:
        tweak(x)
    got = _run(tr.deep_memory_triton, x, options, read, torch.float32)
    loop = _run(deep_memory_naive, x, options, read, torch.float64)
    assert set(got) == set(loop)
    for name, ref in loop.items():
        assert_close(f"{name} (vs loop)", ref.float(), got[name], TOL)
        if name.startswith("d") and (name != "deta" or options.has_momentum):
            assert ref.abs().sum() > 0, f"{name} is identically zero: the check would be empty"


# Every rule and every read order runs fast at least once; the other crossings are slow (the
# interpreter takes ~2-5 s per forward + backward at these sizes on 2 cores).
FAST = {("gd", "write_then_read"), ("momentum", "read_then_write"), ("dgd", "chunk_start"),
        ("dgd_momentum", "write_then_read")}  # fmt: skip


def _crossings(rules, fast):
    return [pytest.param(rule, read, id=f"{rule}-{read}",
                         marks=() if (rule, read) in fast else pytest.mark.slow)
            for rule in rules for read in READS]  # fmt: skip


@pytest.mark.parametrize(("rule", "read"), _crossings(RULES, FAST))
def test_matches_oracle(rule, read):
    """T = 10: two full chunks and a partial one; initial momentum for the momentum rules."""
    options = DeepMemoryOptions(MLP, rule=rule, chunk_size=4)
    _check(options, 10, read, momentum=options.has_momentum)


@pytest.mark.parametrize(("rule", "read"), _crossings(
    ("dgd", "dgd_momentum"), {("dgd", "write_then_read"), ("dgd_momentum", "read_then_write")}))
def test_proximal_step_matches_oracle(rule, read):
    """dgd's proximal step (NL eq. 57, shipped Hope's): a step per layer from its input's norm.
    T = 10 (a partial last chunk), with an initial momentum where the rule has one."""
    options = DeepMemoryOptions(MLP, rule=rule, dgd_step="proximal", chunk_size=4)
    _check(options, 10, read, momentum=options.has_momentum, seed=7)


@pytest.mark.parametrize("T", [3, pytest.param(9, marks=pytest.mark.slow)])
def test_proximal_step_without_initial_momentum(T):
    """T shorter than a chunk and not a multiple of it, large steps (theta up to 2, so the
    proximal shrink differs from the explicit step by a factor of ~2-3), no initial momentum."""

    def big_steps(x):
        x["theta"].mul_(4.0)

    options = DeepMemoryOptions(MLP, rule="dgd_momentum", dgd_step="proximal", chunk_size=4)
    _check(options, T, "read_then_write", momentum=False, seed=T, tweak=big_steps)


@pytest.mark.parametrize("rule", [pytest.param("momentum", marks=pytest.mark.slow),
                                  "dgd_momentum"])  # fmt: skip
def test_gates_at_their_limits(rule):
    """alpha = 1 (full forget), eta = 0 (no momentum carried) and theta = 0 (no write) on some
    tokens: the segment products must give exact zeros there, not 0/0."""

    def limits(x):
        x["alpha"][:, 2] = 1.0
        x["eta"][:, 5] = 0.0
        x["theta"][:, 7] = 0.0

    options = DeepMemoryOptions(MLP, rule=rule, chunk_size=4)
    _check(options, 10, "write_then_read", momentum=True, tweak=limits)


@pytest.mark.parametrize("rule", ["momentum",
                                  pytest.param("dgd_momentum", marks=pytest.mark.slow)])  # fmt: skip
def test_without_initial_momentum(rule):
    _check(DeepMemoryOptions(MLP, rule=rule, chunk_size=4), 10, "read_then_write", momentum=False)


@pytest.mark.parametrize("rule", ["gd", "dgd_momentum"])
def test_sequence_shorter_than_a_chunk(rule):
    options = DeepMemoryOptions(MLP, rule=rule, chunk_size=4)
    _check(options, 3, "write_then_read", momentum=options.has_momentum, seed=3)


@pytest.mark.parametrize("act", ["silu", *(pytest.param(a, marks=pytest.mark.slow)
                                           for a in ("relu", "tanh", "identity"))])
def test_other_activations(act):
    st = MemoryStructure(D, D, depth=2, expansion=2, activation=act)
    _check(DeepMemoryOptions(st, rule="dgd", chunk_size=4), 10, "write_then_read", momentum=False)


def test_chunk_of_one_and_odd_hidden_width():
    """chunk 1 (the exact per-token recurrence) and widths that are no power of two."""
    st = MemoryStructure(5, 5, depth=2, expansion=3, activation="gelu")
    _check(DeepMemoryOptions(st, rule="momentum", chunk_size=1), 5, "read_then_write",
           momentum=True)  # fmt: skip


def test_hope_self_generated_values_over_two_segments():
    """Hope (NL eqs. 83-88): each segment's values are the memory's own chunk-start read of v,
    ``v_hat = M_{t0}(v)``, then a dgd write with read_then_write reads; the state carries into
    the next segment. Outputs, states and gradients through the values and the carried state."""
    tr = load("deep_memory.triton")
    options = DeepMemoryOptions(MLP, rule="dgd", chunk_size=4)
    x = _inputs(MLP, 8, momentum=False, seed=5)

    def hope(fn, dtype):
        leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items()}
        W = initial_weights([leaves["W0"], leaves["W1"]], B)
        outs = []
        for s in (slice(0, 4), slice(4, 8)):
            q, k, v, th, et, al = (leaves[n][:, s] for n in SEQ_INPUTS)
            v_hat, _ = memory_forward(MLP, W, v.transpose(1, 2))  # [B, H, 4, D]
            o, (W, _) = fn(q, k, v_hat.transpose(1, 2), th, et, al, W, options,
                           read="read_then_write", output_final_state=True)  # fmt: skip
            outs.append(o)
        o = torch.cat(outs, dim=1)
        loss = (o * o).sum() + (W[0] * W[1].transpose(-1, -2)).sum()
        return o, W, torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)

    o_ref, W_ref, g_ref = hope(deep_memory_chunk, torch.float64)
    o, W, g = hope(tr.deep_memory_triton, torch.float32)
    assert_close("o", o_ref.float(), o, TOL)
    for i in range(2):
        assert_close(f"W{i}_T", W_ref[i].float(), W[i], TOL)
    for name, a, b in zip(x, g_ref, g, strict=True):
        assert_close(f"d{name}", a.float(), b, TOL)


UNCOVERED = [
    pytest.param({"objective": "huber"}, "objective='huber'", id="huber"),
    pytest.param({"rule": "muon"}, "rule='muon'", id="muon"),
    pytest.param({"retention": "kl"}, "retention='kl'", id="kl"),
    pytest.param({"retention": "lq"}, "retention='lq'", id="lq"),
    pytest.param({"retention_mode": "local"}, "local", id="local"),
    pytest.param({"window": 2}, "Omega window", id="window"),
    pytest.param({"retention": "kl", "lag_token": True}, "retention='kl'", id="lag"),
    pytest.param({"structure": MemoryStructure(D, D, depth=2, expansion=2, gated=True)},
                 "gated", id="gated"),  # fmt: skip
    pytest.param({"structure": MemoryStructure(D, D, depth=3, expansion=2)}, "depth 3", id="depth3"),
    pytest.param({"structure": MemoryStructure(D, D, expansion=2, residual=False)}, "residual",
                 id="no-residual"),  # fmt: skip
    pytest.param({"chunk_size": 128}, "chunk_size 128", id="chunk128"),
    pytest.param({"structure": MemoryStructure(256, 256, expansion=4)}, "weight tile",
                 id="too-wide"),  # fmt: skip
]


@pytest.mark.parametrize(("fields", "reason"), UNCOVERED)
def test_uncovered_options_run_the_chunk_form_and_say_why(fields, reason):
    tr = load("deep_memory.triton")
    options = DeepMemoryOptions(**{"structure": MLP, "chunk_size": 4, **fields})
    st = options.structure
    q, k, v = (torch.randn(B, 6, H, n) for n in (st.d_in, st.d_in, st.d_out))
    gates = (0.3 * torch.rand(B, 6, H), torch.rand(B, 6, H), 0.1 * torch.rand(B, 6, H))
    W = initial_weights(init_params(st, H), B)
    assert tr.unsupported(options, torch.float32) is not None and reason in tr.unsupported(
        options, torch.float32)  # fmt: skip
    with pytest.warns(UserWarning, match="runs the torch chunk form for .*" + reason.split("'")[0]):
        o, _ = tr.deep_memory_triton(q, k, v, *gates, W, options)
    o_ref, _ = deep_memory_chunk(q, k, v, *gates, W, options)
    assert torch.equal(o, o_ref)


def test_float64_runs_the_chunk_form():
    tr = load("deep_memory.triton")
    options = DeepMemoryOptions(MLP, chunk_size=4)
    x = _inputs(MLP, 6, momentum=False)
    with pytest.warns(UserWarning, match="float64"):
        got = _run(tr.deep_memory_triton, x, options, "write_then_read", torch.float64, grad=False)
    ref = _run(deep_memory_chunk, x, options, "write_then_read", torch.float64, grad=False)
    assert all(torch.equal(ref[n], got[n]) for n in ref)


def test_covered_options_claim_the_kernel():
    tr = load("deep_memory.triton")
    for rule in RULES:
        assert tr.unsupported(DeepMemoryOptions(MLP, rule=rule), torch.float32) is None
    for rule in ("dgd", "dgd_momentum"):
        prox = DeepMemoryOptions(MLP, rule=rule, dgd_step="proximal")
        assert tr.unsupported(prox, torch.float32) is None


def test_no_final_state_and_no_grad():
    tr = load("deep_memory.triton")
    options = DeepMemoryOptions(MLP, rule="momentum", chunk_size=4)
    x = {n: t.float() for n, t in _inputs(MLP, 7, momentum=False).items()}
    args = [x[n] for n in SEQ_INPUTS]
    W = initial_weights([x["W0"], x["W1"]], B)
    with torch.no_grad():
        o, final = tr.deep_memory_triton(*args, W, options)
    assert final is None
    o_ref, _ = deep_memory_naive(*args, W, options)
    assert_close("o", o_ref, o, TOL)


def test_public_entry_reaches_the_kernel(monkeypatch):
    """deep_memory(..., backend='triton') launches the Triton kernel (through the dispatcher)."""
    load("deep_memory.triton")
    fresh_dispatch(monkeypatch)
    support = load("triton_support")
    launched, check = [], support.check_launch
    monkeypatch.setattr(support, "check_launch",
                        lambda op, *a: (launched.append(op), check(op, *a)))  # fmt: skip
    options = DeepMemoryOptions(MLP, rule="dgd", chunk_size=4)
    x = {n: t.float() for n, t in _inputs(MLP, 6, momentum=False).items()}
    args = [x[n] for n in SEQ_INPUTS]
    W = initial_weights([x["W0"], x["W1"]], B)
    o, _ = deep_memory(*args, W, options, backend="triton")
    o_ref, _ = deep_memory(*args, W, options, backend="naive")
    assert launched == ["deep_memory"]
    assert_close("o", o_ref, o, TOL)


def test_dispatcher_picks_triton_on_cuda_and_refuses_cpu_tensors():
    """In a fresh process (kernels compiled, not interpreted): CUDA tensors choose the Triton
    form, CPU tensors forced onto it get an error that says what to do."""
    code = """
        import os, torch
        os.environ.pop("TRITON_INTERPRET", None)
        from nestdsl.kernels import dispatch
        from nestdsl.kernels.deep_memory import (DeepMemoryOptions, MemoryStructure, deep_memory,
                                                 init_params, initial_weights)
        print(dispatch.resolve("deep_memory", "cuda").__name__,
              dispatch.resolve("deep_memory", "cpu").__name__)
        st = MemoryStructure(4, 4, expansion=2)
        x = torch.randn(1, 3, 1, 4)
        g = torch.rand(1, 3, 1)
        try:
            deep_memory(x, x, x, g, g, g, initial_weights(init_params(st, 1), 1),
                        DeepMemoryOptions(st), backend="triton")
        except ValueError as e:
            print("refused:", e)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deep_memory_triton deep_memory_chunk" in proc.stdout
    assert "refused: deep_memory: the triton backend runs on CUDA tensors" in proc.stdout


@pytest.mark.parametrize("rule", ["gd", pytest.param("dgd_momentum", marks=pytest.mark.slow)])
def test_backward_is_the_fused_kernel(rule, monkeypatch):
    """A plain backward runs triton_backward (never the chunk form); only an upstream gradient
    on one output (the other outputs unused: None in the backward) still gives every input's
    gradient, equal to the loop oracle's."""
    tr = load("deep_memory.triton")
    bwd = load("deep_memory.triton_backward")
    calls, fused = [], bwd.backward
    monkeypatch.setattr(bwd, "backward", lambda *a: (calls.append(1), fused(*a))[1])

    def refuse(*a, **kw):
        raise AssertionError("the chunk form ran in a plain backward")

    options = DeepMemoryOptions(MLP, rule=rule, chunk_size=4)
    x = _inputs(MLP, 7, momentum=options.has_momentum, seed=11)
    for pick in ("o", "W1_T"):  # the output alone, then one final weight alone

        def one(fn, dtype, pick=pick):
            leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items()}
            W = initial_weights([leaves["W0"], leaves["W1"]], B)
            mom = [leaves["S0"], leaves["S1"]] if "S0" in leaves else None
            o, (Wt, _) = fn(*(leaves[n] for n in SEQ_INPUTS), W, options, momentum=mom,
                            output_final_state=True)  # fmt: skip
            y = o if pick == "o" else Wt[1]
            up = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y).to(dtype)
            return torch.autograd.grad((y * up).sum(), list(leaves.values()),
                                       materialize_grads=True)  # fmt: skip

        ref = one(deep_memory_naive, torch.float64)
        monkeypatch.setattr(tr, "deep_memory_chunk", refuse)
        got = one(tr.deep_memory_triton, torch.float32)
        monkeypatch.setattr(tr, "deep_memory_chunk", deep_memory_chunk)
        for name, a, b in zip(x, ref, got, strict=True):
            assert_close(f"d{name} (upstream on {pick} only)", a.float(), b, TOL)
    assert len(calls) == 2


@pytest.mark.parametrize("rule", ["momentum", "dgd"])
def test_second_order_gradients_match_the_chunk_form(rule):
    """create_graph through the kernel (second-order training, e.g. Hope's task-loss memories):
    the gradients of a functional of the first gradients equal the chunk form's."""
    tr = load("deep_memory.triton")
    options = DeepMemoryOptions(MLP, rule=rule, chunk_size=4)
    x = _inputs(MLP, 6, momentum=options.has_momentum, seed=2)
    gen = torch.Generator().manual_seed(4)
    ups = {n: torch.randn(t.shape, generator=gen, dtype=torch.float64) for n, t in x.items()}

    def second(fn, dtype):
        leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items()}
        W = initial_weights([leaves["W0"], leaves["W1"]], B)
        mom = [leaves["S0"], leaves["S1"]] if "S0" in leaves else None
        o, (Wt, _) = fn(*(leaves[n] for n in SEQ_INPUTS), W, options, momentum=mom,
                        output_final_state=True)  # fmt: skip
        first = torch.autograd.grad(o.square().sum() + Wt[1].square().sum(),
                                    [leaves["q"], leaves["W0"]], create_graph=True)  # fmt: skip
        total = sum((g * ups[n].to(dtype)).sum() for g, n in zip(first, ("q", "W0"), strict=True))
        return dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()),
                                                    materialize_grads=True), strict=True))  # fmt: skip

    ref, got = second(deep_memory_chunk, torch.float64), second(tr.deep_memory_triton, torch.float32)
    for name in ref:
        assert_close(f"d2 {name}", ref[name].float(), got[name], TOL)
    assert ref["k"].abs().sum() > 0 and ref["theta"].abs().sum() > 0


@pytest.mark.parametrize("create_graph", [False, True])
def test_one_tensor_in_two_slots(create_graph):
    """The same tensor as theta and alpha: its gradient is the sum of both slots' parts (also
    when the backward records its graph)."""
    tr = load("deep_memory.triton")
    options = DeepMemoryOptions(MLP, rule="gd", chunk_size=4)
    x = _inputs(MLP, 6, momentum=False)

    def run(fn, dtype):
        g = (0.2 * x["alpha"]).to(dtype).requires_grad_()
        W = initial_weights([x["W0"].to(dtype), x["W1"].to(dtype)], B)
        o, _ = fn(*(x[n].to(dtype) for n in ("q", "k", "v")), g, x["eta"].to(dtype), g, W, options)
        return torch.autograd.grad(o.square().sum(), [g], create_graph=create_graph)[0].detach()

    assert_close("d gate", run(deep_memory_chunk, torch.float64).float(),
                 run(tr.deep_memory_triton, torch.float32), TOL)  # fmt: skip


DEEP_SPECS = ["hope", "titans-lmm", "titans-mag", "titans-mal", "titans-mac", "moneta", "yaad",
              "memora", "atlas"]  # fmt: skip


@pytest.mark.parametrize("spec", DEEP_SPECS)
def test_pick_kernels_names_the_kernels_own_verdict(spec):
    """`show --after pick_kernels` says whether each deep memory runs fused on a GPU; the
    kernel's run-time check (``unsupported``) gives the same answer for every shipped spec's
    memories (the compiled module's options), and shipped hope runs fused."""
    import nestdsl
    from nestdsl.compiler.modules.memory_deep import DeepMemory

    from ..compiler.helpers import load_small

    tr = load("deep_memory.triton")
    bwd = load("deep_memory.triton_backward")
    model = nestdsl.compile(load_small(spec))
    memories = [m for m in model.modules() if isinstance(m, DeepMemory)
                and m.plan.kernel == "deep_memory"]  # fmt: skip
    assert memories
    for m in memories:
        forward_says, backward_says = tr.unsupported(m.options, torch.float32), bwd.unfused(m.options)
        if forward_says is not None:
            assert "triton runs the torch chunk form: " in m.plan.why, m.plan.why
        elif backward_says is not None:
            assert "triton: fused forward, chunk-form backward" in m.plan.why, m.plan.why
        else:
            assert m.plan.why.endswith("triton: fused forward and backward"), m.plan.why
    if spec == "hope":
        assert all(m.options.dgd_step == "proximal" for m in memories)
        assert all(m.plan.why.endswith("triton: fused forward and backward") for m in memories)


def test_backward_over_its_tile_budget_recomputes_the_chunk_form(monkeypatch):
    """A memory the forward kernel covers but whose weight tile is over the backward kernel's
    budget (shared memory on a GPU) gets the chunk form's backward: exact gradients, and the
    backward kernel never runs. The budget is lowered here to reach it at test sizes."""
    tr = load("deep_memory.triton")
    bwd = load("deep_memory.triton_backward")
    monkeypatch.setattr(bwd, "TILE_BUDGET", 16 * 16 - 1)  # this memory: 16 x 16
    monkeypatch.setattr(bwd, "backward", lambda *a: pytest.fail("the backward kernel ran"))
    options = DeepMemoryOptions(MLP, rule="dgd", dgd_step="proximal", chunk_size=4)
    assert bwd.unfused(options) is not None and tr.unsupported(options, torch.float32) is None
    x = _inputs(MLP, 6, momentum=False, seed=9)
    got = _run(tr.deep_memory_triton, x, options, "read_then_write", torch.float32)
    ref = _run(deep_memory_naive, x, options, "read_then_write", torch.float64)
    for name, a in ref.items():
        assert_close(f"{name} (vs loop)", a.float(), got[name], TOL)
