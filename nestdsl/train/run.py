"""A trained run in Python: `nestdsl.load_run(RUN)` gives its model, spec, settings and state.

A run folder (written by `nestdsl train`) records the spec's text, its `--set` overrides, every
training setting and checkpoints. Loading it rebuilds the model from the saved spec copy (so a
later edit of the shipped spec does not change it), loads the latest checkpoint's weights
(checksums verified, no pickle) and returns it in eval mode, ready for `model(tokens, state)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nestdsl.data.tokenizer import ByteTokenizer, Tokenizer
from nestdsl.errors import UserError
from nestdsl.train.checkpoint import load_weights
from nestdsl.train.config import TrainConfig
from nestdsl.train.folder import RunFolder
from nestdsl.train.metrics import read_metrics


@dataclass
class Run:
    """A run folder loaded: what `nestdsl.load_run` returns.

    * `model`: the compiled model with the checkpoint's weights, in eval mode;
    * `spec`: the `CheckedSpec` it was built from (the run's spec.yaml and overrides);
    * `config`: the `TrainConfig` the run trained with;
    * `state`: where the run stands: `step`, `checkpoint` (its folder), `train_loss` and
      `val_loss` (the last logged, nats per token, or None), `val_bpb` (the last validation in
      bits per byte) and `memory`, the in-context state carried at that step (`--carry-state`
      runs; otherwise None);
    * `folder`: the run folder;
    * `tokenizer`: what the model reads and writes (`run.tokenizer.encode(text_bytes)`, `decode`):
      bytes, or the run's BPE from its tokenizer.json.
    """

    model: torch.nn.Module
    spec: object
    config: TrainConfig
    state: dict
    folder: Path
    tokenizer: Tokenizer = field(default_factory=ByteTokenizer)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load the run in `run_dir` at its latest checkpoint; UserError if it is not a usable run."""
    import nestdsl

    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise UserError(f"run folder {folder.root} does not exist")
    saved = folder.read_config()
    if not folder.spec.exists():
        raise UserError(f"{folder.root} has no spec.yaml; it is not a complete run folder")
    checkpoint = folder.latest_checkpoint()
    if checkpoint is None:
        raise UserError(f"{folder.root} has no checkpoint yet; train it first")
    tokenizer = folder.read_tokenizer()
    spec = nestdsl.load(folder.spec, overrides=list(saved["spec"].get("overrides") or []) or None)
    model = nestdsl.compile(spec).to(device)
    loaded = load_weights(checkpoint, model)
    model.eval()
    memory = None
    if loaded.memory_states:
        memory = {k: v.to(device) for k, v in loaded.memory_states[0].items()}
    records = [r for r in read_metrics(folder.metrics) if r.get("step", 0) <= loaded.step]
    last = {kind: next((r["loss"] for r in reversed(records) if r.get("kind") == kind), None)
            for kind in ("train", "val")}  # fmt: skip
    val_bpb = next((r.get("bpb") for r in reversed(records) if r.get("kind") == "val"), None)
    state = {
        "step": loaded.step,
        "checkpoint": checkpoint,
        "train_loss": last["train"],
        "val_loss": last["val"],
        "val_bpb": val_bpb,
        "memory": memory,
    }
    config = TrainConfig.from_dict(saved["train"])
    return Run(model, spec, config, state, folder.root, tokenizer)
