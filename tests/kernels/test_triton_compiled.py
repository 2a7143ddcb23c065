"""Compiled models on the Triton backend equal the same models on the torch chunk forms.

``NESTDSL_KERNEL_BACKEND=triton`` reaches the kernels through the compiler (gates as step
sizes, ``scale=1``, read-before-write shifts, the normalized linear attention's extra value
channel, learned initial states); logits and every parameter gradient must agree. The shipped
specs at reduced width, in the Triton interpreter.
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
