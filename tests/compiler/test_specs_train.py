"""Every shipped spec trains on the CPU: in a short run on the embedded corpus, its loss falls.

Widths are reduced with `--set`-style overrides so the 13 runs fit the suite's budget; the
in-context machinery (levels, chunks, windows, segments) is the shipped spec's own."""

from __future__ import annotations

import math

import pytest

import nestdsl
from nestdsl.train import TrainConfig, spec_source, train
from nestdsl.train.metrics import read_metrics

from .helpers import small_overrides


@pytest.mark.parametrize("name", nestdsl.shipped_names())
def test_loss_falls_in_a_short_run(name, tmp_path):
    config = TrainConfig(steps=24, batch_size=4, seq_len=64, eval_every=24, eval_batches=2,
                         ckpt_every=24, log_every=1, seed=0, device="cpu", lr=1e-2)  # fmt: skip
    result = train(spec_source(name, small_overrides(name)), config, tmp_path / "run", progress=False)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 24 and all(math.isfinite(x) for x in losses), name
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.3, f"{name}: loss {first:.3f} -> {last:.3f}"
    assert (result.run_dir / "loss.png").is_file()
