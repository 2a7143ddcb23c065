"""The recall task end to end on a tiny model: structure, determinism, the held-out metric."""

from __future__ import annotations

import math

import pytest
import torch

from nestdsl.errors import UserError
from nestdsl.eval.mqar import IGNORE, MQARShape, mqar_rows
from nestdsl.eval.recall import RecallSettings, evaluate_recall, run_recall

TINY = RecallSettings(steps=3, batch_size=4, eval_rows=6, heads=2, layers=1, vocab=64, log_every=2)
POINT = {"L": 16, "N": 2, "d_model": 16}


def test_tiny_recall_end_to_end():
    result = run_recall("deltanet", [POINT], TINY, progress=False)
    assert result["task"] == "recall" and result["spec"] == "deltanet"
    (point,) = result["points"]
    assert {k: point[k] for k in POINT} == POINT
    assert 0.0 <= point["rows_all_correct"] <= point["accuracy"] <= 1.0
    assert point["diverged_at"] is None and math.isfinite(point["final_train_loss"])
    assert [c["step"] for c in point["curve"]] == [2, 3]  # every log_every steps and the last
    assert all(c["state_max"] > 0 for c in point["curve"])  # the memory wrote something
    # the resized model: embedding 64 x 16 and head 16 x 64 among its parameters
    assert point["parameters"] > 2 * 64 * 16
    # a fixed seed gives the same result
    assert run_recall("deltanet", [POINT], TINY, progress=False)["points"][0] == point


class Oracle(torch.nn.Module):
    """Answers every query whose key came at most `window` tokens before it by looking the key
    up in the context of N pairs (every query when the window is the row): accuracy 1."""

    def __init__(self, pairs=2, vocab=64, window=None):
        super().__init__()
        self.pairs, self.vocab, self.window = pairs, vocab, window

    def forward(self, tokens, state=None):
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            where = {}
            for t in range(0, T - 1):
                key = int(tokens[b, t])
                if key in where and (self.window is None or t - where[key] <= self.window):
                    logits[b, t, int(tokens[b, where[key] + 1])] = 1.0
                if t < 2 * self.pairs and t % 2 == 0:  # the context is the first 2N tokens
                    where[key] = t
        return logits, {}


def test_held_out_metric_scores_an_oracle_and_a_constant():
    shape = MQARShape(16, 2, 64)
    settings = RecallSettings(eval_rows=10, batch_size=4, vocab=64)
    assert evaluate_recall(Oracle(), shape, settings, "cpu")["accuracy"] == 1.0
    const = Oracle()
    const.forward = lambda tokens, state=None: (torch.zeros(*tokens.shape, 64), {})
    inputs, labels = mqar_rows(shape, 10, seed=0)
    assert (labels != IGNORE).sum() == 20
    scores = evaluate_recall(const, shape, settings, "cpu")  # argmax of zeros is token 0
    assert (scores["accuracy"], scores["rows_all_correct"]) == (0.0, 0.0)  # values are >= 32
    assert {b["accuracy"] for b in scores["by_distance"]} == {0.0}


def test_accuracy_by_distance_shows_what_a_window_answers():
    """A lookup that sees 16 tokens back answers exactly the queries of the bins up to 16."""
    shape = MQARShape(64, 8, 128)
    settings = RecallSettings(eval_rows=64, batch_size=16, vocab=128)
    scores = evaluate_recall(Oracle(pairs=8, vocab=128, window=16), shape, settings, "cpu")
    bins = {b["distances"]: b for b in scores["by_distance"]}
    assert list(bins) == ["1-8", "9-16", "17-32", "33-64"]
    assert sum(b["queries"] for b in bins.values()) == 64 * 8  # every query in one bin
    assert bins["1-8"]["accuracy"] == bins["9-16"]["accuracy"] == 1.0
    assert bins["17-32"]["accuracy"] == bins["33-64"]["accuracy"] == 0.0
    near = (bins["1-8"]["queries"] + bins["9-16"]["queries"]) / (64 * 8)
    assert scores["accuracy"] == pytest.approx(near, abs=1e-6)  # rows of N queries each


@pytest.mark.parametrize(
    ("settings", "points", "message"),
    [
        (RecallSettings(steps=0), [POINT], "steps must be at least 1"),
        (RecallSettings(lr=-1.0), [POINT], "learning rate must be positive"),
        (TINY, [{"L": 16, "K": 3}], "unknown grid keys"),
        (TINY, [{"L": 64, "N": 2, "d_model": 16}], "vocabulary larger than L"),
    ],
    ids=["steps", "lr", "grid-key", "vocab"],
)
def test_bad_settings_are_refused(settings, points, message):
    with pytest.raises(UserError, match=message):
        run_recall("deltanet", points, settings, progress=False)


class InfiniteGradient(torch.autograd.Function):
    """The identity whose backward is infinite: a finite loss with an infinite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class Blowup(torch.nn.Module):
    """A trainable toy whose logits turn to NaN (or its gradient to inf) on its third call."""

    vocab = 64

    def __init__(self, where: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(64))
        self.calls, self.where = 0, where

    def forward(self, tokens, state=None):
        self.calls += 1
        logits = self.w.expand(*tokens.shape, 64)
        if self.calls == 3 and self.where == "loss":
            logits = logits * float("nan")
        if self.calls == 3 and self.where == "gradient":
            logits = InfiniteGradient.apply(logits)
        return logits, {"M": torch.full((1,), float(self.calls))}


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_divergence_stops_training_and_says_where(monkeypatch, where):
    import nestdsl.eval.recall as recall

    monkeypatch.setattr(recall.nestdsl, "compile", lambda checked: Blowup(where))
    settings = RecallSettings(steps=10, batch_size=2, eval_rows=2, vocab=64, log_every=1)
    result = run_recall("deltanet", [POINT], settings, progress=False)
    (point,) = result["points"]
    assert (point["diverged_at"], point["diverged_in"]) == (2, where)
    assert point["final_train_loss"] is None
    assert [c["state_max"] for c in point["curve"]] == [1.0, 2.0, 3.0]  # recorded up to the end


def test_one_cycle_schedule_by_hand():
    from nestdsl.eval.synthetic import one_cycle

    values = [one_cycle(s, 11, 0.2) for s in range(11)]  # warm-up of 2 steps, cosine over 8
    assert values[0] == pytest.approx(1 / 25)
    assert values[1] == pytest.approx(1 / 25 + (1 - 1 / 25) / 2)
    assert values[2] == pytest.approx(1.0)
    assert values[6] == pytest.approx(1 / 25e4 + (1 - 1 / 25e4) / 2)  # half way down
    assert values[10] == pytest.approx(1 / 25e4)
    assert one_cycle(0, 1, 0.1) == pytest.approx(1 / 25)  # one step: no division by zero


def test_state_peak_reads_memories_only():
    from nestdsl.eval.synthetic import state_max as _state_max

    state = {
        "layer.0.M.W.0": torch.tensor([3.0, -5.0]),
        "layer.1.M.S.0": torch.tensor([[1.0]]),
        "layer.0.q.conv0": torch.tensor([9.0]),  # a short convolution's buffer: not a memory
        "layer.0.M.count": torch.tensor([70]),  # integer bookkeeping: not a value
    }
    assert _state_max(state, {"M"}) == 5.0
    assert _state_max({"layer.0.q.conv0": torch.tensor([9.0])}, {"M"}) == 0.0
