"""`nestdsl eval` end to end: a tiny recall grid, bpb of a trained run folder, user mistakes."""

from __future__ import annotations

import argparse
import json

import pytest

from nestdsl.cli import main
from nestdsl.commands import eval as eval_command
from nestdsl.errors import UserError

SMALL = ["--set", "dims.d_model=16", "--set", "dims.n_heads=2", "--set", "dims.d_head=8",
         "--set", "dims.n_layers=1"]  # fmt: skip


def run_eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    return eval_command.run(parser.parse_args(argv))


def test_recall_grid_writes_json(tmp_path, capsys):
    out = tmp_path / "recall.json"
    argv = ["transformer", "--task", "recall", "--grid", "L=16,N=2/4,d_model=16", "--steps", "2",
            "--batch-size", "2", "--eval-rows", "4", "--vocab", "32", "--layers", "1",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert run_eval(argv) == 0
    result = json.loads(out.read_text())
    assert [(p["L"], p["N"]) for p in result["points"]] == [(16, 2), (16, 4)]
    assert result["settings"]["vocab"] == 32 and result["settings"]["steps"] == 2
    printed = capsys.readouterr()
    assert "MQAR recall, 2 steps" in printed.out and f"result: {out}" in printed.out
    # every curve record is reported as it is made, progress bars or not
    assert "L=16,N=4,d_model=16: step 2  loss" in printed.err, printed.err
    # each point was scored in its own folder beside the result, and the command again reuses them
    (work,) = tmp_path.glob("transformer-recall-*")
    assert result["work_dir"] == str(work)
    assert sorted(p.name for p in work.glob("*/point.json")) == ["point.json"] * 2
    assert run_eval(argv) == 0
    assert "L=16,N=4,d_model=16: scored earlier in" in capsys.readouterr().err
    assert json.loads(out.read_text()) == result


def test_bpb_of_a_trained_run(tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(b"to be or not to be, that is the question. " * 100)
    run_dir = tmp_path / "run"
    trained = main(["train", "transformer", *SMALL, "--steps", "2", "--batch-size", "2",
                    "--seq-len", "16", "--eval-every", "2", "--ckpt-every", "2",
                    "--data", str(corpus), "--out", str(run_dir), "--no-progress"])  # fmt: skip
    assert trained == 0
    capsys.readouterr()
    assert run_eval([str(run_dir), "--task", "bpb", "--no-progress"]) == 0
    result = json.loads((run_dir / "eval" / "bpb.json").read_text())
    assert result["spec"] == "transformer" and result["trained_steps"] == 2
    assert result["settings"]["seq_len"] == 16  # the run's own window and corpus
    assert result["settings"]["data"] == str(corpus)
    assert 0 < result["bpb"] < 10
    assert "bits per byte" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transformer", "--task", "bpb", "--grid", "L=16"], "--grid \\(belongs to --task recall"),
        (["transformer", "--task", "recall", "--data", "x.txt"], "--data \\(belongs to --task bpb"),
        (["transformer", "--task", "recall", "--grid", "Q=1"], "grid key `Q` is unknown"),
        (["transformer", "--task", "bpb", "--device", "tpu"], "unknown device"),
    ],
    ids=["grid-for-bpb", "data-for-recall", "grid-key", "device"],
)
def test_user_mistakes_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        run_eval(argv)


def test_a_flag_shared_by_tasks_is_helped_once_per_meaning():
    shared_help = eval_command.shared_help
    assert shared_help({"recall": "x", "continual": "y", "needle": "x"}) == "[recall, needle] x; [continual] y"
    assert shared_help({"recall": "default 3 ", "needle": "default 3 "}) == "[recall, needle] default 3"
