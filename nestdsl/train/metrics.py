"""Training metrics: how the loss is measured, the `metrics.jsonl` log, TensorBoard event files
and the `loss.png` plot.

metrics.jsonl holds one JSON object per line:

    {"kind": "train", "step": 10, "loss": 2.91, "bpb": 4.20, "lr": 0.0003, "grad_norm": 0.8,
     "tokens_per_s": 5120.0, "elapsed_s": 3.1}
    {"kind": "val", "step": 100, "loss": 2.55, "bpb": 3.68}
    {"kind": "resume", "step": 200, "elapsed_s": 61.2}

`lr` is the primary level's rate for that update and `grad_norm` the global norm of the trained
parameters' gradients before clipping. `elapsed_s` counts training time across resumes; a
`resume` record marks where a resumed session started (a dashed line on the plot). `step` counts completed optimizer updates; a train record's loss is the mean over the updates
since the previous train record. `loss` is the cross-entropy in nats per *token* (what the
optimizer minimizes); `bpb` is bits per *byte*: the same nats summed over the tokens and divided
by the bytes of text those tokens stand for, then by ln 2. With the `bytes` tokenizer every
token is one byte and `bpb` is loss / ln 2; with `bpe:N` a token covers several bytes, and
`bpb` is the number that compares models with different tokenizers.

On resume the log is cut back to the records up to the checkpoint's step, so the finished log
of an interrupted-and-resumed run has the same records as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from nestdsl.data.batches import VOCAB
from nestdsl.errors import UserError
from nestdsl.train.checkpoint import write_file_atomically


def bits_per_byte(loss_nats: float, bytes_per_token: float = 1.0) -> float:
    """Cross-entropy in nats per token converted to bits per byte of the text the tokens cover.

    `bytes_per_token` is the bytes of the scored tokens over their number (1 for bytes), so
    this is (total nats) / (total bytes) / ln 2.
    """
    return loss_nats / bytes_per_token / math.log(2)


def language_model_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy in nats per token, computed in float32 whatever the autocast dtype."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction
    )


def call_model(
    model, tokens: torch.Tensor, state: dict | None, vocab: int = VOCAB
) -> tuple[torch.Tensor, dict]:
    """`model(tokens, state=state)`, checked against the contract (logits over `vocab` ids) so a
    bad model fails clearly."""
    output = model(tokens, state=state)
    if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict)):
        raise UserError(
            f"the model returned {type(output).__name__}; the contract is (logits, state dict)"
        )
    logits, state = output
    expected = (*tokens.shape, vocab)
    if tuple(logits.shape) != expected:
        raise UserError(
            f"the model returned logits of shape {tuple(logits.shape)}, expected {expected}"
        )
    return logits, state


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl; a torn last line (from a crash) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Appends records to metrics.jsonl; does nothing when disabled (non-main DDP ranks)."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.records: list[dict] = read_metrics(self.path) if enabled else []
        self._handle = None

    def _open(self):
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")
        return self._handle

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        try:
            handle = self._open()
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        except OSError as err:
            raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None

    def sync(self) -> None:
        """Make the records written so far durable (called before each checkpoint)."""
        if self._handle is not None:
            try:
                os.fsync(self._handle.fileno())
            except OSError as err:
                raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None

    def truncate_after(self, step: int) -> None:
        """Keep only the records up to `step` (resume from the checkpoint at that step)."""
        if not self.enabled:
            return
        self.close()
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        try:
            write_file_atomically(self.path, text.encode())
        except OSError as err:
            raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None

    def last(self, kind: str) -> dict | None:
        for record in reversed(self.records):
            if record.get("kind") == kind:
                return record
        return None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class TensorBoardLog:
    """The same records as TensorBoard scalars under `RUN/tensorboard/` (`--log tensorboard`).

    Train records give `train/loss`, `train/bpb`, `train/lr`, `train/grad_norm`,
    `train/tokens_per_s`; validation records `val/loss` and `val/bpb`. On resume the writer is
    reopened with `purge_step`, so TensorBoard drops the events after the checkpoint's step.
    """

    def __init__(self, path: str | Path, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._writer = None
        self._purge_step: int | None = None

    def _open(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "--log tensorboard needs the tensorboard package: "
                    "pip install 'nestdsl[tensorboard]'"
                ) from None
            self._writer = SummaryWriter(str(self.path), purge_step=self._purge_step)
        return self._writer

    def truncate_after(self, step: int) -> None:
        self._purge_step = step + 1

    def append(self, record: dict) -> None:
        kind = record.get("kind")
        if not self.enabled or kind not in ("train", "val"):
            return
        writer = self._open()
        for key in ("loss", "bpb", "lr", "grad_norm", "tokens_per_s"):
            if record.get(key) is not None:
                writer.add_scalar(f"{kind}/{key}", record[key], record["step"])
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def plot_losses(
    records: list[dict], path: str | Path, title: str = "", per_byte: bool = False
) -> None:
    """Write the run's figure (`loss_figure`) as a PNG, atomically."""
    figure = loss_figure(records, title, per_byte)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    try:
        write_file_atomically(Path(path), buffer.getvalue())
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def loss_figure(records: list[dict], title: str = "", per_byte: bool = False):
    """The run as a matplotlib Figure (Agg, no pyplot state): train and validation loss on top,
    the learning rate and the gradient norm below, resumes as dashed lines.

    `per_byte` (runs whose tokens are not bytes) plots the records' bits per byte on top: nats
    per token have no fixed bits-per-byte scale beside them when tokens cover several bytes.
    """
    key = "bpb" if per_byte else "loss"
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(r["step"], r[key]) for r in records if r.get("kind") == "train" and key in r]
    val = [(r["step"], r[key]) for r in records if r.get("kind") == "val" and key in r]
    lr = [(r["step"], r["lr"]) for r in records if r.get("kind") == "train" and "lr" in r]
    norms = [(r["step"], r["grad_norm"]) for r in records
             if r.get("kind") == "train" and r.get("grad_norm") is not None]  # fmt: skip
    resumes = [r["step"] for r in records if r.get("kind") == "resume"]
    figure = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3, 1, height_ratios=(3, 1, 1))
    axes = figure.add_subplot(grid[0])
    lower = [figure.add_subplot(grid[i], sharex=axes) for i in (1, 2)]
    for panel, points, label, color in (
        (lower[0], lr, "learning rate", "tab:green"),
        (lower[1], norms, "grad norm", "tab:red"),
    ):
        if points:
            panel.plot(*zip(*points, strict=True), color=color, linewidth=1.0)
        panel.set_ylabel(label)
        panel.grid(alpha=0.3)
    lower[1].set_xlabel("step")
    for panel in (axes, *lower):
        for step in resumes:
            panel.axvline(step, color="gray", linestyle="--", linewidth=0.8)
    if train:
        axes.plot(*zip(*train, strict=True), label="train", color="tab:blue", linewidth=1.2)
    if val:
        axes.plot(
            *zip(*val, strict=True),
            label="validation",
            color="tab:orange",
            marker="o",
            markersize=3,
        )
    if resumes:
        axes.plot([], [], color="gray", linestyle="--", linewidth=0.8, label="resumed")
    if per_byte:
        axes.set_ylabel("bits per byte")
    else:
        axes.set_ylabel("loss (nats per byte)")
        # A second scale in bits per byte, the unit byte-level results are usually quoted in.
        axes.secondary_yaxis(
            "right", functions=(bits_per_byte, lambda b: b * math.log(2))
        ).set_ylabel("bits per byte")
    axes.grid(alpha=0.3)
    if train or val:
        axes.legend()
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure
