"""`nestdsl train` and `nestdsl generate` end to end, with toy stand-ins for load/compile."""

from __future__ import annotations

import errno
import json

import pytest
from helpers import fail_writing, interrupt_at
from toymodel import ToyRecurrentLM

from nestdsl.train.checkpoint import latest_checkpoint, load_weights
from nestdsl.train.generate import generate_bytes
from nestdsl.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("fake_specs")


@pytest.fixture
def base_args(corpus_file):
    small = "--steps 4 --batch-size 4 --seq-len 16 --eval-every 2 --ckpt-every 2 --device cpu --no-progress"
    return ["train", "toy", "--data", str(corpus_file), *small.split()]


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"nestdsl {command}: ")
    return err


def test_train_then_resume_then_generate(tmp_path, monkeypatch, capsys, our_cli, base_args):
    monkeypatch.chdir(tmp_path)
    assert our_cli(base_args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "toy"  # the default run folder
    assert f"run folder:  {run.relative_to(tmp_path)}" in out
    assert "loss.png" in out and "step-00000004" in out and "bits/byte" in out

    assert our_cli(base_args) == 1
    assert "already holds a run with checkpoints; pass --resume" in one_line_error(capsys, "train")

    assert our_cli(base_args + ["--resume", "--steps", "6"]) == 0
    capsys.readouterr()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"] == [
        0,
        2,
        4,
        6,
    ]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6

    assert (
        our_cli(["generate", str(run), "--prompt", "KING:", "--tokens", "30", "--temperature", "0"])
        == 0
    )
    text = capsys.readouterr().out
    model = ToyRecurrentLM(16)
    load_weights(latest_checkpoint(run / "checkpoints"), model)
    expected = b"KING:" + generate_bytes(model, b"KING:", 30, temperature=0.0)
    assert text.rstrip("\n") == expected.decode("utf-8", errors="replace")


def test_resume_refusals(tmp_path, capsys, our_cli, base_args):
    out = ["--out", str(tmp_path / "run")]
    assert our_cli(base_args + out) == 0
    capsys.readouterr()
    assert our_cli(base_args + out + ["--resume", "--seq-len", "8"]) == 1
    assert "was started with --seq-len 16, not 8" in one_line_error(capsys, "train")
    assert our_cli(base_args + out + ["--resume", "--set", "dims.d_model=32"]) == 1
    assert "was started without --set dims.d_model; a resumed run keeps its model" in (
        one_line_error(capsys, "train")
    )
    assert our_cli(base_args + ["--out", str(tmp_path / "absent"), "--resume"]) == 1
    assert "nothing to resume" in one_line_error(capsys, "train")


def test_overrides_reach_the_model(tmp_path, capsys, our_cli, base_args):
    run = tmp_path / "run"
    assert our_cli(base_args + ["--out", str(run), "--set", "dims.d_model=8"]) == 0
    meta = json.loads((latest_checkpoint(run / "checkpoints") / "meta.json").read_text())
    assert meta["parameters"]["embed.weight"]["shape"] == [256, 8]
    assert meta["spec"]["overrides"] == ["dims.d_model=8"]
    capsys.readouterr()
    assert (
        our_cli(["generate", str(run), "--tokens", "5"]) == 0
    )  # the saved overrides are reapplied


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--data", "/nonexistent/file.txt"], "data file /nonexistent/file.txt does not exist"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--lr", "-1"], "--lr must be positive"),
    ],
)
def test_train_errors_are_one_line(tmp_path, capsys, our_cli, base_args, extra, message):
    assert our_cli(base_args + ["--out", str(tmp_path / "run")] + extra) == 1
    assert message in one_line_error(capsys, "train")


def test_generate_errors_are_one_line(tmp_path, capsys, our_cli):
    assert our_cli(["generate", str(tmp_path / "nope")]) == 1
    assert "run folder" in one_line_error(capsys, "generate")
    (tmp_path / "empty").mkdir()
    assert our_cli(["generate", str(tmp_path / "empty")]) == 1
    assert "not a run folder" in one_line_error(capsys, "generate")


def test_interrupt_and_disk_full_through_the_cli(tmp_path, monkeypatch, capsys, our_cli, base_args):
    out = ["--out", str(tmp_path / "run")]
    with monkeypatch.context() as patch:
        interrupt_at(patch, 3)
        assert our_cli(base_args + out) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("nestdsl train: interrupted at step 3") and "--resume" in err
    with monkeypatch.context() as patch:
        fail_writing(patch, 4, OSError(errno.ENOSPC, "No space left on device"))
        assert our_cli(base_args + out + ["--resume"]) == 1
    assert "no space left on device" in one_line_error(capsys, "train")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000002"
    assert our_cli(base_args + out + ["--resume"]) == 0


def test_resume_reuses_the_runs_overrides(tmp_path, capsys, our_cli, base_args):
    """--resume needs no repeated --set (the run recorded them); only a conflict is refused."""
    run = ["--out", str(tmp_path / "run")]
    assert our_cli(base_args + run + ["--set", "dims.d_model=8"]) == 0
    assert our_cli(base_args + run + ["--resume", "--steps", "6"]) == 0
    meta = json.loads((latest_checkpoint(tmp_path / "run" / "checkpoints") / "meta.json").read_text())
    assert meta["step"] == 6 and meta["parameters"]["embed.weight"]["shape"] == [256, 8]
    assert our_cli(base_args + run + ["--resume", "--steps", "8", "--set", "dims.d_model=8"]) == 0
    capsys.readouterr()
    assert our_cli(base_args + run + ["--resume", "--steps", "10", "--set", "dims.d_model=16"]) == 1
    assert "was started with --set dims.d_model=8, not 16" in one_line_error(capsys, "train")
