"""An interrupted-and-resumed run equals the uninterrupted one exactly (CPU), in every mode."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
from helpers import (
    assert_same_tensors,
    comparable_metrics,
    final_weights,
    interrupt_at,
    tiny_config,
)
from safetensors.torch import load_file
from toymodel import toy_source

from nestdsl.data.batches import ByteBatches
from nestdsl.errors import UserError
from nestdsl.train import TrainingInterrupted, train
from nestdsl.train.checkpoint import latest_checkpoint, step_dirs
from nestdsl.train.metrics import read_metrics


@pytest.mark.parametrize(
    "mode",
    [
        dict(),
        dict(optimizer={"kind": "m3", "lr": 1e-3, "frequency": 3}, log_every=3),
        dict(dropout=0.2, carry_state=True),
        dict(
            optimizer={
                "kind": "delta_momentum",
                "lr": 0.3,
                "momentum": 0.9,
                "forget": 0.5,
                "weight_decay": 0.01,
            }
        ),
    ],
    ids=["adamw", "m3-odd-log-window", "dropout-carried-state", "delta-momentum"],
)
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, corpus, mode):
    optimizer = mode.get("optimizer")
    dropout = mode.get("dropout", 0.0)
    settings = {k: v for k, v in mode.items() if k not in ("optimizer", "dropout")}
    config = tiny_config(**settings)
    source = toy_source(optimizer=optimizer, dropout=dropout)

    whole = train(source, config, tmp_path / "whole", corpus=corpus, progress=False)

    with monkeypatch.context() as patch:
        interrupt_at(patch, 7)  # the checkpoint at step 4 is the last one before the interrupt
        with pytest.raises(TrainingInterrupted, match="--resume"):
            train(source, config, tmp_path / "pieces", corpus=corpus, progress=False)
    assert [p.name for p in step_dirs(tmp_path / "pieces" / "checkpoints")] == ["step-00000004"]
    resumed = train(source, config, tmp_path / "pieces", resume=True, corpus=corpus, progress=False)

    assert comparable_metrics(tmp_path / "pieces") == comparable_metrics(tmp_path / "whole")
    assert_same_tensors(final_weights(tmp_path / "pieces"), final_weights(tmp_path / "whole"))
    latest = resumed.checkpoint
    assert_same_tensors(
        load_file(latest / "optimizer.safetensors"),
        load_file(whole.checkpoint / "optimizer.safetensors"),
    )
    if config.carry_state:
        assert_same_tensors(
            load_file(latest / "memory.safetensors"),
            load_file(whole.checkpoint / "memory.safetensors"),
        )
    assert (resumed.train_loss, resumed.val_loss) == (whole.train_loss, whole.val_loss)


def test_resume_finished_run_is_a_no_op(tmp_path, corpus):
    config = tiny_config(steps=4)
    first = train(toy_source(), config, tmp_path / "run", corpus=corpus, progress=False)
    before = comparable_metrics(tmp_path / "run")
    again = train(
        toy_source(), config, tmp_path / "run", resume=True, corpus=corpus, progress=False
    )
    assert again.step == first.step == 4
    assert again.val_loss == first.val_loss
    assert comparable_metrics(tmp_path / "run") == before
    assert [p.name for p in step_dirs(tmp_path / "run" / "checkpoints")] == ["step-00000004"]


def test_resume_can_extend_steps(tmp_path, corpus):
    train(toy_source(), tiny_config(steps=4), tmp_path / "run", corpus=corpus, progress=False)
    longer = train(
        toy_source(),
        tiny_config(steps=8),
        tmp_path / "run",
        resume=True,
        corpus=corpus,
        progress=False,
    )
    assert longer.step == 8
    assert [r["step"] for r in comparable_metrics(tmp_path / "run") if r["kind"] == "val"] == [
        0,
        4,
        8,
    ]


def test_resume_refuses_changed_settings(tmp_path, corpus):
    train(toy_source(), tiny_config(steps=4), tmp_path / "run", corpus=corpus, progress=False)
    with pytest.raises(UserError, match="--seq-len 16, now 8"):
        train(
            toy_source(),
            tiny_config(steps=4, seq_len=8),
            tmp_path / "run",
            resume=True,
            corpus=corpus,
            progress=False,
        )
    with pytest.raises(UserError, match="training data differs"):
        train(
            toy_source(),
            tiny_config(steps=4),
            tmp_path / "run",
            resume=True,
            corpus=corpus[:-1],
            progress=False,
        )


def test_resume_without_a_run_says_so(tmp_path, corpus):
    with pytest.raises(UserError, match="nothing to resume"):
        train(
            toy_source(),
            tiny_config(),
            tmp_path / "absent",
            resume=True,
            corpus=corpus,
            progress=False,
        )


def test_new_run_refuses_to_overwrite_checkpoints(tmp_path, corpus):
    train(toy_source(), tiny_config(steps=4), tmp_path / "run", corpus=corpus, progress=False)
    with pytest.raises(UserError, match="already holds a run with checkpoints; pass --resume"):
        train(toy_source(), tiny_config(steps=4), tmp_path / "run", corpus=corpus, progress=False)


def test_extending_a_run_keeps_its_schedule(tmp_path, corpus):
    """A larger --steps on resume runs on at the schedule's floor: the rate never jumps back up."""
    run = tmp_path / "run"
    train(toy_source(), tiny_config(steps=6, log_every=1), run, corpus=corpus, progress=False)
    train(toy_source(), tiny_config(steps=10, log_every=1), run, resume=True, corpus=corpus,
          progress=False)  # fmt: skip
    records = read_metrics(run / "metrics.jsonl")
    lr = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    floor = 3e-3 * 0.1
    # update 5 (0-based) is 3/4 of the way through the 4 decay updates after 2 of warmup
    assert lr[6] == pytest.approx(3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4))))
    assert [lr[s] for s in range(7, 11)] == [pytest.approx(floor)] * 4
    assert all(a >= b for a, b in zip(list(lr.values())[2:], list(lr.values())[3:]))
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 10 and config["train"]["schedule_steps"] == 6


def test_a_resumed_run_is_marked_and_its_clock_continues(tmp_path, monkeypatch, corpus):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7)
        with pytest.raises(TrainingInterrupted):
            train(toy_source(), tiny_config(), run, corpus=corpus, progress=False)
    before = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    train(toy_source(), tiny_config(), run, resume=True, corpus=corpus, progress=False)
    records = read_metrics(run / "metrics.jsonl")
    kinds = [(r["kind"], r["step"]) for r in records]
    assert ("resume", 4) in kinds and kinds.index(("resume", 4)) == kinds.index(("val", 4)) + 1
    elapsed = [r["elapsed_s"] for r in records if "elapsed_s" in r]
    assert elapsed == sorted(elapsed), "elapsed_s counts the whole run, across the resume"
    assert [r for r in records if r["kind"] == "train" and r["step"] <= 4] == before[:2]


def test_a_time_limit_set_before_the_loop_stops_it_at_the_first_step(tmp_path, corpus):
    """`stop.time_up()` from the caller (explore's per-candidate limit) is no signal: set while
    the model is still being built, it stops the run at its first step boundary, checkpointed,
    and leaves the process's handlers alone."""
    from nestdsl.train.signals import StopRequest

    stop = StopRequest()
    stop.time_up()
    with pytest.raises(TrainingInterrupted, match="stopped at step 1 and saved it") as caught:
        train(toy_source(), tiny_config(), tmp_path / "run", corpus=corpus, progress=False,
              stop=stop)  # fmt: skip
    assert caught.value.signal == signal.SIGALRM
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000001"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_checkpoints_the_step_it_interrupts(tmp_path, monkeypatch, corpus, signum):
    """The update in flight finishes, its step is saved, and resuming equals never stopping."""
    config = tiny_config()
    whole = train(toy_source(), config, tmp_path / "whole", corpus=corpus, progress=False)
    original = ByteBatches.batch

    def batch(self, step):
        if self.split == "train" and step == 6:
            os.kill(os.getpid(), signum)  # arrives while update 6 (0-based) is being made
        return original(self, step)

    with monkeypatch.context() as patch:
        patch.setattr(ByteBatches, "batch", batch)
        with pytest.raises(TrainingInterrupted, match="stopped at step 7 and saved it") as caught:
            train(toy_source(), config, tmp_path / "pieces", corpus=corpus, progress=False)
    assert caught.value.signal == signum
    assert latest_checkpoint(tmp_path / "pieces" / "checkpoints").name == "step-00000007"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    train(toy_source(), config, tmp_path / "pieces", resume=True, corpus=corpus, progress=False)
    assert comparable_metrics(tmp_path / "pieces") == comparable_metrics(tmp_path / "whole")
    assert_same_tensors(final_weights(tmp_path / "pieces"), final_weights(tmp_path / "whole"))
    assert_same_tensors(
        load_file(tmp_path / "pieces" / "checkpoints" / "step-00000012" / "optimizer.safetensors"),
        load_file(whole.checkpoint / "optimizer.safetensors"),
    )
