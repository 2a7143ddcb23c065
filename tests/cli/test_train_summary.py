"""`nestdsl train` says what it is about to train: size by level, in-context state, and why
a layer runs sequentially (issue 14, item 1)."""

from __future__ import annotations

from nestdsl.cli import main


def test_train_starts_with_the_level_table_and_the_cost_notes(tmp_path, capsys):
    args = ["train", "hope", "--steps", "1", "--batch-size", "1", "--seq-len", "16",
            "--eval-every", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"),
            "--set", "dims.d_model=16", "--set", "dims.d_head=4", "--set", "dims.n_layers=1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    table, _, rest = out.partition("run folder:")
    assert "parameters" in table and "state" in table and "pretrain" in table
    assert "runs sequentially, 8 tokens at a time" in table
    assert "task-loss windows of 16 tokens" in table
    assert "bits/byte" in rest
