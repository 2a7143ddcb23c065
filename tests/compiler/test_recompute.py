"""Training in recomputed spans (model.py): the same logits, states and gradients as one pass,
with less kept for backward.

A model that runs in sequential segments (Titans MAC) trains in spans of a multiple of
`plan.recompute_unit`; `NESTDSL_RECOMPUTE=0` compiles the
reference that keeps every intermediate. `model.recompute = "spans"` runs any model in spans of
`plan.span_unit` (`nestdsl train --recompute spans`); a model in task-loss windows (Hope's CMS)
in reentrant ones. Float64, several spans per call, and a call that starts mid-span (a carried
state) so the spans' alignment to the sequence is exercised too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler.passes.schedule_levels import RECOMPUTE_ENV
from nestdsl.compiler.plan import AUTO_RECOMPUTE_FROM

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


def _assert_same(a, b):
    """Two `_step` results agree: logits, every state entry, every parameter's gradient."""
    torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=1e-10, atol=1e-10, msg=k)
    assert a[2].keys() == b[2].keys() and a[2]
    for n in a[2]:
        torch.testing.assert_close(a[2][n], b[2][n], rtol=1e-8, atol=1e-10, msg=n)


@pytest.mark.parametrize(("name", "extra"), SPECS)
def test_recomputed_spans_equal_one_pass(name, extra, monkeypatch):
    recomputed, reference = _pair(name, monkeypatch, extra)
    unit = recomputed.recompute_unit
    assert unit and reference.recompute_unit is None
    recomputed.recompute = "spans"  # `auto`'s spans, at a length `auto` leaves alone
    T = 4 * unit + 5  # several spans, the last one partial
    assert recomputed._recomputed_span(T) < T
    tokens = torch.randint(0, 256, (2, T + 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a carried state that ends mid-window and mid-segment
        _, carried = reference(tokens[:, :7])
    for state in (None, carried):
        _assert_same(_step(recomputed, tokens, state), _step(reference, tokens, state))


# Models without segments: chunked deep memory, a matrix memory, attention with its cache;
# and models in task-loss windows (CMS), whose spans are reentrant checkpoints.
OPT_IN = ["titans-lmm", "gated-deltanet", "transformer", "hope", "hope-attention"]


@pytest.mark.parametrize("name", OPT_IN)
def test_spans_on_request_equal_one_pass(name):
    torch.manual_seed(0)
    recomputed = nestdsl.compile(nestdsl.load(name, small_overrides(name))).double()
    reference = nestdsl.compile(nestdsl.load(name, small_overrides(name))).double()
    reference.load_state_dict(recomputed.state_dict())
    recomputed.recompute, reference.recompute = "spans", "off"
    unit = recomputed.span_unit
    T = (2 if recomputed.task_window else 4) * max(unit, 8) + 5
    assert recomputed._recomputed_span(T) < T and reference._recomputed_span(T) is None
    tokens = torch.randint(0, 256, (2, T + 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a carried state that ends mid-chunk (and mid-window)
        _, carried = reference(tokens[:, :7])
    for state in (None, carried):
        _assert_same(_step(recomputed, tokens, state), _step(reference, tokens, state))
    assert _layer_calls_in_backward(recomputed, tokens[:, :T]) > 1
    assert _layer_calls_in_backward(reference, tokens[:, :T]) == 0


def test_span_units_cover_the_task_windows():
    plan = nestdsl.load("hope").plan
    assert plan.task_window == 16 and plan.span_unit == 64  # CMS chunks 16, 32, 64
    model = nestdsl.compile(nestdsl.load("hope", small_overrides("hope")))
    model.recompute = "off"
    assert not model.reenters_backward and model._recomputed_span(1024) is None
    model.recompute = "spans"
    assert model.reenters_backward and model._recomputed_span(1024) == 128
    # Shipped hope keeps one state per C tokens: per layer M_memory 4 x 32 x 128 x 2 = 32,768
    # numbers every 8 tokens, M_k..M_alpha 4 x 16,384 every 16, C_1..C_3 65,536 each every 16,
    # 32, 64: C = 294,912 / (4,096 + 4,096 + 4,096 + 2,048 + 1,024) = 19.2; its spans at
    # T = 2,048 are sqrt(2,048 x 19.2) = 198 -> 192 tokens (3 units of 64).
    shipped = nestdsl.compile(nestdsl.load("hope"))
    shipped.recompute = "spans"
    assert shipped._state_every == pytest.approx(19.2) and shipped._recomputed_span(2048) == 192
    model.recompute = "128"  # a span given in tokens
    assert model.reenters_backward and model._recomputed_span(1024) == 128
    assert model._recomputed_span(128) is None
    lmm = nestdsl.compile(nestdsl.load("titans-lmm", small_overrides("titans-lmm")))
    lmm.recompute = "spans"
    assert not lmm.reenters_backward  # no task-loss windows: the default checkpoint
    with pytest.raises(ValueError, match="recompute must be one of"):
        model.recompute = "sometimes"
    for bad in ("0", "-64"):
        with pytest.raises(ValueError, match="or a number of tokens per span"):
            model.recompute = bad
    with pytest.raises(ValueError, match="spans of 96 tokens: a span must be a multiple of 64"):
        model.recompute = "96"
    assert model.recompute == "128"  # a refused value changes nothing


def test_spans_of_a_given_length_equal_one_pass():
    torch.manual_seed(0)
    recomputed = nestdsl.compile(nestdsl.load("titans-lmm", small_overrides("titans-lmm"))).double()
    reference = nestdsl.compile(nestdsl.load("titans-lmm", small_overrides("titans-lmm"))).double()
    reference.load_state_dict(recomputed.state_dict())
    recomputed.recompute, reference.recompute = "32", "off"  # the rule would pick 48 here
    tokens = torch.randint(0, 256, (2, 4 * 32 + 6), generator=torch.Generator().manual_seed(1))
    assert recomputed._recomputed_span(4 * 32 + 5) == 32
    _assert_same(_step(recomputed, tokens), _step(reference, tokens))
    assert _layer_calls_in_backward(recomputed, tokens[:, :-1]) == 5  # 4 full spans, 1 partial


def test_spans_in_task_windows_replay_no_window(monkeypatch):
    """Each span is handed the token after it, so the window it ends with learns at once: the
    spans' forward runs as many windows as one pass (a replayed window would add one per span)."""
    from nestdsl.compiler.modules.model import CompiledModel

    passes = []
    original = CompiledModel._span
    monkeypatch.setattr(CompiledModel, "_span", lambda *a, **k: passes.append(1) or original(*a, **k))
    counts = {}
    for mode in ("spans", "off"):
        model = nestdsl.compile(nestdsl.load("hope", small_overrides("hope")))
        model.recompute = mode
        passes.clear()
        model(torch.randint(0, 256, (1, 4 * 64)))
        counts[mode] = len(passes)
    assert counts["spans"] == counts["off"] == 4 * 64 // 16


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
    recomputed.recompute = "spans"
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


def test_auto_leaves_short_sequences_alone():
    """`auto` recomputes a segmented model's sequences from AUTO_RECOMPUTE_FROM tokens on (below,
    spans cost their extra forward pass for little memory); `spans` recomputes any length."""
    mac = nestdsl.compile(nestdsl.load("titans-mac", small_overrides("titans-mac")))
    assert mac.recompute == "auto" and AUTO_RECOMPUTE_FROM == 1024
    assert mac._recomputed_span(AUTO_RECOMPUTE_FROM - 16) is None
    assert mac._recomputed_span(AUTO_RECOMPUTE_FROM) == 16 * 8
    mac.recompute = "spans"
    assert mac._recomputed_span(AUTO_RECOMPUTE_FROM - 16) == 16 * 8
    assert mac._recomputed_span(128) == 48  # sqrt(128 x 16) = 45 -> 3 units of 16


@pytest.mark.parametrize(("name", "seq_len"), [("titans-lmm", 64), ("hope", 128)])
def test_training_with_recomputed_spans_follows_the_same_trajectory(name, seq_len, tmp_path):
    """`nestdsl train --recompute spans`: the same losses as training without recomputation
    (float32, so up to rounding)."""
    from nestdsl.train import TrainConfig, spec_source, train
    from nestdsl.train.metrics import read_metrics

    losses = {}
    for mode in ("spans", "off"):
        config = TrainConfig(steps=3, batch_size=2, seq_len=seq_len, eval_every=3, eval_batches=1,
                             ckpt_every=3, log_every=1, device="cpu", recompute=mode)  # fmt: skip
        result = train(spec_source(name, small_overrides(name)), config, tmp_path / mode,
                       progress=False)  # fmt: skip
        records = read_metrics(result.run_dir / "metrics.jsonl")
        losses[mode] = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses["spans"]) == 3
    assert losses["spans"] == pytest.approx(losses["off"], rel=1e-5)


def test_bad_recompute_values_are_user_errors(tmp_path):
    from nestdsl.errors import UserError
    from nestdsl.train import TrainConfig, spec_source, train

    for bad in ("always", "0"):
        with pytest.raises(UserError, match="--recompute must be one of .* or a number of tokens"):
            TrainConfig(recompute=bad)
    config = TrainConfig(steps=1, device="cpu", recompute="24")  # titans-lmm's unit is 16
    with pytest.raises(UserError, match="--recompute 24: spans of 24 tokens: .*multiple of 16"):
        train(spec_source("titans-lmm", small_overrides("titans-lmm")), config, tmp_path / "bad",
              progress=False)  # fmt: skip
    assert not (tmp_path / "bad").exists()


def _product_flops(model, tokens) -> int:
    """FLOPs of the matrix products of one forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        logits, _ = model(tokens)
        logits.sum().backward()
    return counter.get_total_flops()


def test_off_keeps_every_chunk_of_the_deep_memories():
    """The deep memories' chunk groups (memory_deep.RECOMPUTE) rerun in backward only when the
    model recomputes: the same numbers as `off`, more products."""
    from nestdsl.compiler.modules.memory_deep import RECOMPUTE

    torch.manual_seed(0)
    grouped = nestdsl.compile(nestdsl.load("titans-lmm", small_overrides("titans-lmm"))).double()
    off = nestdsl.compile(nestdsl.load("titans-lmm", small_overrides("titans-lmm"))).double()
    off.load_state_dict(grouped.state_dict())
    off.recompute = "off"
    chunk = grouped.layers[0].memories["M"].chunk
    grouped.recompute = str((RECOMPUTE + 2) * chunk)  # one span of 10 chunks: two groups
    tokens = torch.randint(0, 256, (2, (RECOMPUTE + 2) * chunk + 4),
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    _assert_same(_step(grouped, tokens), _step(off, tokens))
    assert _product_flops(grouped, tokens[:, :-1]) > _product_flops(off, tokens[:, :-1])


def test_auto_groups_chunks_from_the_same_length_as_spans():
    """`auto` recomputes the deep memories' chunk groups only from AUTO_RECOMPUTE_FROM tokens on
    (titans-lmm at T = 512: 1.32x the step for 0.8 GB less), except Muon's, which recompute at
    any length (atlas at its shipped size: 0.78 GB instead of 3.83); `spans` at any length,
    `off` never. The model decides per call, for every memory, grouped calls included."""
    from nestdsl.compiler.modules.memory_deep import RECOMPUTE, DeepMemory

    hope = nestdsl.compile(nestdsl.load("hope", small_overrides("hope")))
    assert all(layer.groups for layer in hope.layers)  # M_k, M_v, M_eta, M_alpha: one call
    calls = [c for layer in hope.layers
             for c in [*layer.memories.values(), *(g.call for g in layer.groups.values())]
             if isinstance(c, DeepMemory)]  # fmt: skip
    assert {c.options.recompute for c in calls} == {RECOMPUTE}  # as built
    short = torch.randint(0, 256, (1, 16))
    for mode, group in (("auto", 0), ("spans", RECOMPUTE), ("off", 0), ("64", RECOMPUTE)):
        hope.recompute = mode
        with torch.no_grad():
            hope(short)
        assert {c.options.recompute for c in calls} == {group}, mode
    lmm = nestdsl.compile(nestdsl.load("titans-lmm", small_overrides("titans-lmm")))
    memory = lmm.layers[0].memories["M"]
    for T, group in ((AUTO_RECOMPUTE_FROM, RECOMPUTE), (AUTO_RECOMPUTE_FROM - 1, 0)):
        with torch.no_grad():
            lmm(torch.randint(0, 256, (1, T)))
        assert memory.options.recompute == group, T
    atlas = nestdsl.compile(nestdsl.load("atlas", small_overrides("atlas")))
    muon = atlas.layers[0].memories["M"]
    assert muon.rule == "muon"
    for mode, group in (("auto", 1), ("off", 0), ("spans", 1)):
        atlas.recompute = mode
        with torch.no_grad():
            atlas(short)
        assert muon.options.recompute == group, mode
