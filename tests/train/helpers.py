"""Helpers for training tests: tiny settings and comparisons of runs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

import nestdsl.train.checkpoint as checkpoint
from nestdsl.data.batches import ByteBatches
from nestdsl.train import TrainConfig
from nestdsl.train.metrics import read_metrics

# Fields of a metrics record that are timings, hence differ between otherwise identical runs.
TIMING_FIELDS = ("tokens_per_s", "elapsed_s")


def tiny_config(**changes) -> TrainConfig:
    """A run of a dozen updates on 4 x 16 bytes: a couple of seconds on one CPU thread."""
    values = dict(
        steps=12,
        batch_size=4,
        seq_len=16,
        eval_every=4,
        ckpt_every=4,
        log_every=2,
        eval_batches=2,
        warmup_steps=2,
        device="cpu",
    )
    values.update(changes)
    return TrainConfig(**values)


def comparable_metrics(run_dir: Path) -> list[dict]:
    """The run's measurements (train and val records) without their timing fields; `resume`
    markers are events of one session, not measurements, so they are left out."""
    return [
        {k: v for k, v in record.items() if k not in TIMING_FIELDS}
        for record in read_metrics(Path(run_dir) / "metrics.jsonl")
        if record.get("kind") != "resume"
    ]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = (Path(run_dir) / "checkpoints" / "latest").read_text().strip()
    return load_file(Path(run_dir) / "checkpoints" / latest / "model.safetensors")


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def interrupt_at(monkeypatch, step: int) -> None:
    """Make the next run raise KeyboardInterrupt when it asks for the training batch of `step`."""
    original = ByteBatches.batch

    def batch(self, s):
        if self.split == "train" and s == step:
            raise KeyboardInterrupt
        return original(self, s)

    monkeypatch.setattr(ByteBatches, "batch", batch)


def fail_writing(monkeypatch, step: int, error: BaseException) -> None:
    """Raise `error` when checkpoint `step` writes its optimizer file (weights already written)."""
    original = checkpoint._write_file

    def write(path: Path, data: bytes) -> None:
        if (
            path.parent.name.startswith(f".tmp-step-{step:08d}")
            and path.name == "optimizer.safetensors"
        ):
            raise error
        original(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", write)
