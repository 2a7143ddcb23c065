"""Two torchrun processes (gloo, CPU) follow the loss curve of one process on the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import comparable_metrics, final_weights, tiny_config
from toymodel import toy_source

from nestdsl.train import train

HERE = Path(__file__).parent


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_process_ddp_matches_one_process(tmp_path, corpus_file):
    ddp_run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(HERE / "entry.py"), str(ddp_run), "--data", str(corpus_file), "--steps", "8",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    config = tiny_config(steps=8, data=str(corpus_file))
    train(toy_source(), config, tmp_path / "single", progress=False)

    ddp, single = comparable_metrics(ddp_run), comparable_metrics(tmp_path / "single")
    assert [(r["kind"], r["step"]) for r in ddp] == [(r["kind"], r["step"]) for r in single]
    for a, b in zip(ddp, single, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    for name, weight in final_weights(ddp_run).items():
        torch.testing.assert_close(
            weight, final_weights(tmp_path / "single")[name], rtol=1e-4, atol=1e-5
        )
    assert json.loads((ddp_run / "config.json").read_text())["world_size"] == 2
    assert (
        len(
            json.loads((ddp_run / "checkpoints" / "step-00000008" / "meta.json").read_text())["rng"]
        )
        == 2
    )

    # A run without carried state resumes in another number of processes (same global batches).
    longer = tiny_config(steps=10, data=str(corpus_file))
    resumed = train(toy_source(), longer, ddp_run, resume=True, progress=False)
    assert resumed.step == 10


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_hope_in_reentrant_spans_trains_under_ddp(tmp_path, corpus_file):
    """Hope's recomputed spans are reentrant checkpoints, whose backward passes each mark the
    parameters ready again: DDP runs them as a static graph and follows one process without
    recomputation."""
    small = ["dims.d_model=32", "dims.n_heads=2", "dims.d_head=16", "dims.n_layers=1"]
    flags = ["--data", str(corpus_file), "--steps", "2", "--seq-len", "128", "--batch-size", "4",
             "--eval-every", "2", "--no-progress", *[a for s in small for a in ("--set", s)]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nestdsl", "train", "hope", "--out", str(tmp_path / "ddp"), "--recompute", "spans"]  # fmt: skip
    single = [sys.executable, "-m", "nestdsl", "train", "hope", "--out", str(tmp_path / "single"),
              "--recompute", "off"]  # fmt: skip
    for command in (ddp, single):
        done = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=400,
                              env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    spans, plain = comparable_metrics(tmp_path / "ddp"), comparable_metrics(tmp_path / "single")
    kinds = [r["kind"] for r in spans]
    assert kinds == [r["kind"] for r in plain] and {"train", "val"} <= set(kinds)
    for a, b in zip(spans, plain, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
