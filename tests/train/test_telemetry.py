"""Training telemetry (issue 14, item 10): the learning rate and gradient norm in metrics.jsonl,
the plot and TensorBoard, and a validation density that draws a curve."""

from __future__ import annotations

import pytest
from helpers import tiny_config
from toymodel import toy_source

from nestdsl.train import TrainConfig, train
from nestdsl.train.metrics import loss_figure, read_metrics


def test_every_train_record_has_the_rate_and_the_gradient_norm(tmp_path, corpus):
    train(toy_source(), tiny_config(grad_clip=0.0), tmp_path / "run", corpus=corpus, progress=False)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert records and all(r["lr"] > 0 and r["grad_norm"] > 0 for r in records)  # also unclipped


def test_the_default_run_validates_often_enough_to_draw_a_curve():
    config = TrainConfig()
    assert config.steps // config.eval_every >= 10


def test_the_plot_shows_rate_norm_and_resumes():
    records = [
        {"kind": "val", "step": 0, "loss": 5.5},
        {"kind": "train", "step": 2, "loss": 5.0, "lr": 1e-3, "grad_norm": 2.0},
        {"kind": "train", "step": 4, "loss": 4.0, "lr": 2e-3, "grad_norm": 1.5},
        {"kind": "resume", "step": 4},
        {"kind": "train", "step": 6, "loss": 3.5, "lr": 1e-3, "grad_norm": 1.0},
    ]
    loss, rate, norm = loss_figure(records).axes[:3]
    assert list(rate.lines[0].get_ydata()) == [1e-3, 2e-3, 1e-3]
    assert list(norm.lines[0].get_ydata()) == [2.0, 1.5, 1.0]
    dashed = [line for line in loss.lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in dashed] == [[4, 4]]


def test_tensorboard_events_carry_the_metrics(tmp_path, corpus):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the [tensorboard] extra"
    )
    run = tmp_path / "run"
    train(toy_source(), tiny_config(log="tensorboard"), run, corpus=corpus, progress=False)
    events = accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = read_metrics(run / "metrics.jsonl")
    for kind, key in (("train", "loss"), ("train", "lr"), ("train", "grad_norm"), ("val", "loss")):
        scalars = events.Scalars(f"{kind}/{key}")
        expected = [(r["step"], r[key]) for r in records if r["kind"] == kind]
        assert [(s.step, pytest.approx(s.value, rel=1e-6)) for s in scalars] == expected
