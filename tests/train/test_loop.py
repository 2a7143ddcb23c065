"""The training loop's outputs (metrics, plot, summary) and its one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import tiny_config
from toymodel import toy_source

from nestdsl.errors import UserError
from nestdsl.train import bits_per_byte, train
from nestdsl.train.distributed import resolve_device
from nestdsl.train.metrics import plot_losses, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_run_folder_metrics_and_plot(tmp_path, corpus):
    result = train(toy_source(), tiny_config(), tmp_path / "run", corpus=corpus, progress=False)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "spec.yaml",
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "checkpoints",
    }
    assert (run / "spec.yaml").read_text() == toy_source().spec_text
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 12 and config["optimizer"]["kind"] == "adamw"

    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in records if r["kind"] == "val"] == [0, 4, 8, 12]
    for record in records:
        assert record["bpb"] == pytest.approx(record["loss"] / math.log(2), rel=1e-12)
    assert 4.0 < records[0]["loss"] < 8.0  # about ln 256 = 5.5 for an untrained model
    assert records[-1]["loss"] < records[0]["loss"]  # it learns something

    png = (run / "loss.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000
    assert result.checkpoint.name == "step-00000012"
    assert result.val_loss == records[-1]["loss"]
    assert result.val_bpb == bits_per_byte(result.val_loss)
    assert result.train_loss == [r for r in records if r["kind"] == "train"][-1]["loss"]


def test_bits_per_byte_is_loss_over_ln2():
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0)
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)


def test_plot_of_empty_log_is_still_a_png(tmp_path):
    plot_losses([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG_SIGNATURE)


def test_m3_and_carried_state_train(tmp_path, corpus):
    source = toy_source(optimizer={"kind": "m3", "lr": 1e-3, "frequency": 4})
    result = train(
        source, tiny_config(carry_state=True), tmp_path / "run", corpus=corpus, progress=False
    )
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result.val_loss < records[0]["loss"]
    assert (result.checkpoint / "memory.safetensors").exists()


def test_progress_bar_goes_to_stderr(tmp_path, corpus, capsys):
    train(toy_source(), tiny_config(steps=2), tmp_path / "run", corpus=corpus, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "tok/s" in captured.err and "loss" in captured.err


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "unknown device 'tpu'"), ("cuda:x", "unknown device"), ("gpu", "unknown device")],
)
def test_unknown_device(device, message):
    with pytest.raises(UserError, match=message):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, corpus):
    with pytest.raises(UserError, match="CUDA is not available; use --device cpu"):
        train(
            toy_source(),
            tiny_config(device="cuda"),
            tmp_path / "run",
            corpus=corpus,
            progress=False,
        )
    assert not (tmp_path / "run").exists()


def test_missing_data_file(tmp_path):
    with pytest.raises(UserError, match="data file .*nope.txt does not exist"):
        train(
            toy_source(),
            tiny_config(data=str(tmp_path / "nope.txt")),
            tmp_path / "run",
            progress=False,
        )


def test_bad_settings_are_user_errors(tmp_path, corpus):
    with pytest.raises(UserError, match="--steps must be at least 1"):
        tiny_config(steps=0)
    with pytest.raises(UserError, match="optimizer 'adamw' has no setting 'momentum'"):
        train(
            toy_source(optimizer={"kind": "adamw", "momentum": 0.9}),
            tiny_config(),
            tmp_path / "r",
            corpus=corpus,
        )
    assert not (tmp_path / "r").exists()  # built before the folder is written: nothing to undo
    source = toy_source()
    source.build = lambda: "not a module"
    with pytest.raises(UserError, match="gave str, not a torch module"):
        train(source, tiny_config(), tmp_path / "r", corpus=corpus, progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="fewer than seq_len"):
        train(
            toy_source(),
            tiny_config(seq_len=4000),
            tmp_path / "r2",
            corpus=corpus[:20000],
            progress=False,
        )


def test_diverging_loss_stops_with_a_message(tmp_path, corpus):
    source = toy_source(optimizer={"kind": "adamw", "lr": 1e30})
    with pytest.raises(UserError, match="the loss became nan at step .*smaller --lr"):
        train(source, tiny_config(grad_clip=0.0), tmp_path / "run", corpus=corpus, progress=False)


def test_refuses_to_start_in_a_folder_that_is_not_a_run(tmp_path, corpus):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and not a run folder .*notes.txt"):
        train(toy_source(), tiny_config(), tmp_path / "project", corpus=corpus, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"unrelated": true}')
    with pytest.raises(UserError, match="not a run folder"):
        train(toy_source(), tiny_config(), tmp_path / "other", corpus=corpus, progress=False)
    assert (tmp_path / "other" / "config.json").read_text() == '{"unrelated": true}'


def test_a_model_breaking_the_contract_is_named(tmp_path, corpus):
    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(256, 256)

        def forward(self, tokens, state=None):
            return self.embed(tokens)

    source = toy_source()
    source.build = LogitsOnly
    with pytest.raises(UserError, match="the contract is \\(logits, state dict\\)"):
        train(source, tiny_config(), tmp_path / "run2", corpus=corpus, progress=False)
