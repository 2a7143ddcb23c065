"""Compiled models on the Triton backend equal the same models on the torch chunk forms.

``NESTDSL_KERNEL_BACKEND=triton`` reaches the kernels through the compiler (gates as step
sizes, ``scale=1``, read-before-write shifts, the normalized linear attention's extra value
channel, learned initial states); logits and every parameter gradient must agree. The shipped
specs at reduced width, in the Triton interpreter. Deep memories (hope's five dgd memories
with the proximal step, titans-lmm with and without its memory norm decaying toward zero, which
both fused kernels run) take one AdamW step and the updated parameters
must agree too; a memory the kernel does not cover falls back and says why.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.kernels import dispatch

from ..compiler.helpers import load_small
from .helpers import RTOL, assert_close
from .triton_interp import fresh_dispatch, interpreter, load  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter")


def _logits_and_grads(model, tokens):
    model.zero_grad()
    logits, _ = model(tokens)
    F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}  # fmt: skip


@pytest.mark.parametrize("spec", ["gated-deltanet", "deltanet", "linear-attention"])
def test_compiled_spec_on_triton_equals_chunk(spec, monkeypatch):
    for module in ("delta_rule.triton", "linear_attention.triton"):
        load(module)
    fresh_dispatch(monkeypatch)
    torch.manual_seed(0)
    model = nestdsl.compile(load_small(spec))
    tokens = torch.randint(0, 256, (2, 21))
    ref_logits, ref_grads = _logits_and_grads(model, tokens)
    support = load("triton_support")
    launched, check = [], support.check_launch
    monkeypatch.setattr(support, "check_launch",
                        lambda op, *a: (launched.append(op), check(op, *a)))  # fmt: skip
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    logits, grads = _logits_and_grads(model, tokens)
    kernel = "linear_attention" if spec == "linear-attention" else "gated_delta_rule"
    assert launched and set(launched) == {kernel}
    tol = RTOL[torch.float32]
    assert_close(f"{spec} logits", ref_logits, logits, tol)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        if g.norm() > 0:
            assert_close(f"{spec} d{name}", g, grads[name], tol)


DEEP = [
    # shipped hope: dgd with the proximal step, 5 memories, 8-token segments (~18 s interpreted)
    pytest.param("hope", [], "fused", id="hope", marks=pytest.mark.slow),
    pytest.param("titans-lmm", ["memories.M.structure.norm=none", "memories.M.structure.norm_eps=null",
                               "memories.M.retention.toward=zero"], "fused", id="titans-lmm-no-norm"),
    # titans-lmm's memory with its layer norm, decaying toward zero: both fused kernels
    pytest.param("titans-lmm", ["memories.M.retention.toward=zero"], "fused", id="titans-lmm-decay-to-zero"),
    # shipped titans-lmm: its layer norm and decay toward its initial state, both fused
    pytest.param("titans-lmm", [], "fused", id="titans-lmm"),
    # a memory the kernel does not cover (depth 3) falls back and says why
    pytest.param("titans-lmm", ["memories.M.structure.depth=3"], "depth 3", id="titans-lmm-depth3",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("spec", "overrides", "verdict"), DEEP)
def test_deep_memory_training_step_on_triton_equals_chunk(spec, overrides, verdict, monkeypatch):
    """One AdamW training step of a compiled deep-memory spec (reduced width) on the Triton
    backend: logits, every parameter gradient and every updated parameter equal the chunk
    backend's. Memories the fused kernel covers launch it; the others run the chunk form and
    warn with the reason `show --after pick_kernels` prints."""
    import copy
    import warnings

    from ..compiler.helpers import small_overrides

    tr = load("deep_memory.triton")
    fresh_dispatch(monkeypatch)
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load(spec, [*small_overrides(spec), *overrides]))
    twin = copy.deepcopy(model)
    tokens = torch.randint(0, 256, (1, 17))  # past a 16-token chunk, two 8-token ones

    def step(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        logits, grads = _logits_and_grads(m, tokens)
        opt.step()
        return logits, grads, {n: p.detach().clone() for n, p in m.named_parameters()}

    ref_logits, ref_grads, ref_params = step(model)
    launches, apply = [], tr._DeepMemory.apply
    monkeypatch.setattr(tr._DeepMemory, "apply", lambda *a: (launches.append(1), apply(*a))[1])
    bwd = load("deep_memory.triton_backward")
    reverse, walk = [], bwd.backward
    monkeypatch.setattr(bwd, "backward", lambda *a: (reverse.append(1), walk(*a))[1])
    if verdict == "fused":  # neither direction may recompute the chunk form
        monkeypatch.setattr(tr, "deep_memory_chunk",
                            lambda *a, **kw: pytest.fail("the chunk form ran"))  # fmt: skip
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits, grads, params = step(twin)
    said = [str(w.message) for w in caught if "runs the torch chunk form" in str(w.message)]
    if verdict == "fused":
        assert launches and not said, said
        assert reverse  # the backward kernel ran
    else:
        assert not launches and said and all(verdict in s for s in said)
    tol = RTOL[torch.float32]
    assert_close(f"{spec} logits", ref_logits, logits, tol)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        if g.norm() > 0:
            assert_close(f"{spec} d{name}", g, grads[name], tol)
    for name, p in ref_params.items():
        assert_close(f"{spec} {name} after the step", p, params[name], tol)
    # The memories' learned initial states get a gradient through the kernel's backward.
    init = [n for n in ref_grads if ".memories.M" in n and ".initial." in n]
    assert init and all(ref_grads[n].norm() > 0 for n in init), init
