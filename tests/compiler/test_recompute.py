"""Training in recomputed spans (model.py): the same logits, states and gradients as one pass,
with less kept for backward.

A model that runs in sequential segments (Titans MAC) trains in spans of a multiple of
`plan.recompute_unit`; `NESTDSL_RECOMPUTE=0` compiles the
reference that keeps every intermediate. Float64, several spans per call, and a call that
starts mid-span (a carried state) so the spans' alignment to the sequence is exercised too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler.passes.schedule_levels import RECOMPUTE_ENV

from .helpers import small_overrides

# titans-mac as shipped and with segments (and memory chunks) of 8 tokens.
SPECS = [("titans-mac", []), ("titans-mac", ["levels.segment.every=8"])]


def _pair(name: str, monkeypatch, extra=()):
    """(recomputed, reference) float64 models with the same weights."""
    torch.manual_seed(0)
    models = []
    for flag in ("1", "0"):
        monkeypatch.setenv(RECOMPUTE_ENV, flag)
        checked = nestdsl.load(name, [*small_overrides(name), *extra])
        models.append(nestdsl.compile(checked).double())
    models[1].load_state_dict(models[0].state_dict())
    return models


def _step(model, tokens, state=None):
    """Logits, final state and every parameter's gradient of the next-token loss."""
    model.zero_grad(set_to_none=True)
    logits, new = model(tokens[:, :-1], state)
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), {k: v.detach() for k, v in new.items()}, grads


@pytest.mark.parametrize(("name", "extra"), SPECS)
def test_recomputed_spans_equal_one_pass(name, extra, monkeypatch):
    recomputed, reference = _pair(name, monkeypatch, extra)
    unit = recomputed.recompute_unit
    assert unit and reference.recompute_unit is None
    T = 4 * unit + 5  # several spans, the last one partial
    assert recomputed._recomputed_span(T) < T
    tokens = torch.randint(0, 256, (2, T + 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a carried state that ends mid-window and mid-segment
        _, carried = reference(tokens[:, :7])
    for state in (None, carried):
        a, b = _step(recomputed, tokens, state), _step(reference, tokens, state)
        torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
        assert a[1].keys() == b[1].keys()
        for k in a[1]:
            torch.testing.assert_close(a[1][k], b[1][k], rtol=1e-10, atol=1e-10, msg=k)
        assert a[2].keys() == b[2].keys() and a[2]
        for n in a[2]:
            torch.testing.assert_close(a[2][n], b[2][n], rtol=1e-8, atol=1e-10, msg=n)


def _layer_calls_in_backward(model, tokens) -> int:
    """How many times the first layer runs during backward (a recomputed span reruns it)."""
    calls, in_backward = [0], [False]
    model.layers[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + in_backward[0]))
    logits, _ = model(tokens)
    in_backward[0] = True
    logits.sum().backward()
    return calls[0]


def test_backward_reruns_the_spans(monkeypatch):
    # The differential side (what it saves is measured by benchmarks/bench_models.py: titans-mac
    # at B=4, T=2048 from 7.3 GB to 1.3 GB, docs/benchmarks.md): with recomputation backward
    # reruns every span, without it nothing.
    recomputed, reference = _pair("titans-mac", monkeypatch)
    T = 16 * recomputed.recompute_unit
    tokens = torch.randint(0, 256, (2, T))
    spans = -(-T // recomputed._recomputed_span(T))
    assert _layer_calls_in_backward(recomputed, tokens) == spans > 1
    assert _layer_calls_in_backward(reference, tokens) == 0


def test_no_recomputation_without_segments_or_gradients():
    for name in ("titans-lmm", "hope", "hope-attention"):  # chunked kernels; task-loss windows
        assert nestdsl.load(name).plan.recompute_unit is None, name
    mac = nestdsl.compile(nestdsl.load("titans-mac", small_overrides("titans-mac")))
    with torch.no_grad():
        assert mac._recomputed_span(1024) is None
    assert mac._recomputed_span(1024) == 16 * 8
