"""An interrupted-and-resumed run equals the uninterrupted one exactly (CPU), in every mode."""

from __future__ import annotations

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

from nestdsl.errors import UserError
from nestdsl.train import TrainingInterrupted, train
from nestdsl.train.checkpoint import step_dirs


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
