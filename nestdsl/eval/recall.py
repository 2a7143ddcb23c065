"""The `recall` task: train a spec from scratch on MQAR and report held-out recall accuracy.

Protocol (Zoology, Arora et al. 2023, §3 and its MQAR configs; settings of nestdsl issue 10):

* the data is `nestdsl.eval.mqar`: N key-value pairs then N queries in a row of L tokens,
  vocabulary 256 by default; every training step draws a fresh batch (seeded by the step), the
  held-out set is `eval_rows` rows drawn from a seed no training step uses;
* per grid point (L, N, d_model) a fresh model is compiled from the spec resized to d_model,
  `heads` heads (d_head = d_model / heads) and `layers` layers, and trained with AdamW (lr 2e-3,
  weight decay 0.1 on matrices, betas from nestdsl.optim) under a one-cycle schedule (10% linear
  warm-up from lr/25, cosine down to lr/25e4), gradient norm clipped at 1.0, cross-entropy on
  the query positions only;
* the score is recall accuracy: per held-out row the fraction of its N queries whose argmax
  next-token prediction is the right value, averaged over rows (every row has N queries, so it
  equals the accuracy over all queries); `rows_all_correct` is the fraction of perfect rows;
  `by_distance` splits the queries by how far back their key was (1-8, 9-16, 17-32, ...
  tokens), which shows what a hybrid answers with its window and what with its memory.

Every point trains in its own folder under `work_dir` (the CLI's `--work-dir`, by default
`<spec>-recall-<hash of spec, settings and overrides>` beside `--out`, or in runs/eval): a
checkpoint at every curve record, then `point.json` once it is scored. The same command again
skips the scored points and resumes the others at their last record, with the numbers an
uninterrupted run gives.

A step whose loss is not finite stops that point's training (`diverged_at` records the step);
so does a step whose gradient norm is not finite (before its update; `diverged_in` says which).
The point is still evaluated, so a diverged model scores what it scores. Every `log_every`
steps the curve records the mean training loss, the learning rate, and since the last record
the largest gradient norm before clipping and the largest absolute entry of the returned
in-context memory state (`state_max`, short-convolution buffers left out): a memory that blows
up shows there before the loss does.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import nestdsl
from nestdsl.data.batches import step_seed
from nestdsl.errors import UserError
from nestdsl.eval.checkpoints import Checkpoints, as_json
from nestdsl.eval.grid import point_label
from nestdsl.eval.mqar import MQARShape, mqar_rows, query_distances, row_accuracy
from nestdsl.eval.report import write_result
from nestdsl.eval.subject import Resize, load_resized
from nestdsl.eval.synthetic import WORK_DIR_FLAG, default_work_dir, train_on_rows

GRID_KEYS = {"L": 64, "N": 8, "d_model": 64}  # the setting
HELDOUT = "mqar-heldout"  # the split name of the held-out seed; training uses "mqar-train"


@dataclass(frozen=True)
class RecallSettings:
    """How each grid point is trained and scored (defaults: the issue's setting)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_rows: int = 512
    heads: int = 2
    layers: int = 2
    vocab: int = 256
    seed: int = 0
    log_every: int = 100

    def check(self) -> None:
        for name in ("steps", "batch_size", "eval_rows", "heads", "layers", "vocab", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"recall: {name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"recall: the learning rate must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and self.grad_clip >= 0):
            raise UserError("recall: weight decay and gradient clipping must be non-negative")
        if not 0 < self.warmup_fraction < 1:
            raise UserError(
                f"recall: warmup_fraction must be in (0, 1), got {self.warmup_fraction}"
            )


@torch.no_grad()
def evaluate_recall(model, shape: MQARShape, settings: RecallSettings, device) -> dict:
    """Held-out accuracy of `model` on `eval_rows` MQAR rows (fresh memory per row)."""
    model.eval()
    inputs, labels = mqar_rows(shape, settings.eval_rows, step_seed(settings.seed, HELDOUT, 0))
    scores, predicted = [], []
    for start in range(0, settings.eval_rows, settings.batch_size):
        x = inputs[start : start + settings.batch_size].to(device)  # [b, L]
        logits, _ = model(x)  # [b, L, vocab]
        scores.append(row_accuracy(logits.cpu(), labels[start : start + settings.batch_size]))
        predicted.append(logits.argmax(dim=-1).cpu())
    model.train()
    per_row = torch.cat(scores)  # [eval_rows]
    right = torch.cat(predicted) == labels  # [eval_rows, L]
    return {
        "accuracy": round(per_row.mean().item(), 6),
        "rows_all_correct": round((per_row == 1).double().mean().item(), 6),
        "by_distance": by_distance(right, query_distances(inputs, labels, shape.pairs)),
    }


def by_distance(right: torch.Tensor, distance: torch.Tensor) -> list[dict]:
    """Accuracy of the queries whose key came 1-8, 9-16, 17-32, ... tokens before them.

    What a hybrid answers with which part: a sliding window of w tokens sees the pairs up to
    distance w, the memory must carry the rest. `right`, `distance`: `[rows, L]` (distance 0
    off queries, as `mqar.query_distances`).
    """
    bins, low, high = [], 0, 8
    while low < int(distance.max()):
        inside = (distance > low) & (distance <= high)
        count = int(inside.sum())
        if count:
            bins.append({"distances": f"{low + 1}-{high}", "queries": count,
                         "accuracy": round(right[inside].double().mean().item(), 6)})  # fmt: skip
        low, high = high, 2 * high
    return bins


def train_point(
    checked: nestdsl.CheckedSpec,
    shape: MQARShape,
    settings: RecallSettings,
    device: torch.device,
    progress: bool = True,
    label: str = "",
    on_record: Callable[[dict], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Train one fresh model on MQAR at `shape`; its accuracy, curve and divergence step.

    `on_record` (optional) sees every curve record as it is made, e.g. to watch a long run;
    `checkpoints` (optional) saves the training at every record and resumes from the latest.
    """
    torch.manual_seed(settings.seed)
    model = nestdsl.compile(checked).to(device)
    if getattr(model, "vocab", shape.vocab) < shape.vocab:
        raise UserError(f"recall: the model's vocabulary {model.vocab} is below {shape.vocab}")

    def rows(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mqar_rows(shape, settings.batch_size, step_seed(settings.seed, "mqar-train", step))

    trained = train_on_rows(model, rows, settings, device, memories=set(checked.spec.memories),
                            desc=f"recall {label}", progress=progress, on_record=on_record,
                            checkpoints=checkpoints)  # fmt: skip
    return {**evaluate_recall(model, shape, settings, device), **trained}


def run_recall(
    spec: str,
    points: list[dict[str, int]],
    settings: RecallSettings = RecallSettings(),
    device: torch.device | str = "cpu",
    overrides: list[str] = (),
    progress: bool = True,
    work_dir: str | Path | None = None,
) -> dict:
    """Train and score `spec` at every grid point (`{"L", "N", "d_model"}`); a JSON-able result.

    With a `work_dir` every point is checkpointed there and a rerun resumes (module docstring).
    """
    settings.check()
    device = torch.device(device)
    results = []
    name = spec
    for point in points:
        unknown = set(point) - set(GRID_KEYS)
        if unknown:
            raise UserError(
                f"recall: unknown grid keys {sorted(unknown)}; known: {list(GRID_KEYS)}"
            )
        point = {**GRID_KEYS, **point}
        shape = MQARShape(seq_len=point["L"], pairs=point["N"], vocab=settings.vocab)
        shape.check()
        size = Resize(point["d_model"], settings.heads, settings.layers, settings.vocab)
        checked = load_resized(spec, size, list(overrides))
        name = checked.name
        label = f"{name} {point_label(point)}"
        folder = None if work_dir is None else Path(work_dir) / point_folder(point)
        identity = {"spec": checked.spec.model_dump(mode="json"), "settings": asdict(settings),
                    "point": point}  # fmt: skip
        outcome = _scored_earlier(folder, identity, label)
        if outcome is None:
            checkpoints = (None if folder is None
                           else Checkpoints(folder / "checkpoints", identity, "synthetic"))
            outcome = train_point(checked, shape, settings, device, progress, label,
                                  on_record=lambda entry, label=label: _report(label, entry),
                                  checkpoints=checkpoints)  # fmt: skip
            if folder is not None:  # scored: the point's result replaces its checkpoints
                write_result({"identity": identity, "outcome": outcome}, folder / "point.json")
                shutil.rmtree(checkpoints.root, ignore_errors=True)
        results.append({**point, **outcome})
        if progress:
            tqdm.write(f"{label}: accuracy {outcome['accuracy']:.3f}", file=sys.stderr)
    return {
        "task": "recall",
        "spec": name,
        "protocol": "Zoology MQAR (Arora et al. 2023): keys low half, values high half, "
        "power-law query gaps (a=0.01), labels at queries only; per-row accuracy",
        "settings": {**asdict(settings), "overrides": list(overrides), "device": str(device)},
        "points": results,
        **({} if work_dir is None else {"work_dir": str(work_dir)}),
    }


def point_folder(point: dict[str, int]) -> str:
    """`L64-N8-d_model64`: a grid point as a folder name."""
    return "-".join(f"{k}{v}" for k, v in point.items())


def _scored_earlier(folder: Path | None, identity: dict, label: str) -> dict | None:
    """The outcome a finished point left in `folder`, or None; UserError for another run's."""
    path = None if folder is None else folder / "point.json"
    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # half-written or damaged: train the point again
    if not isinstance(saved, dict) or saved.get("identity") != as_json(identity):
        raise UserError(
            f"{folder} holds the recall of another spec or other settings; give another "
            "--work-dir or delete that folder"
        )
    tqdm.write(f"{label}: scored earlier in {folder}", file=sys.stderr)  # as records are shown
    return saved["outcome"]


def _report(label: str, entry: dict) -> None:
    """One line per curve record on stderr, so an hour-long point shows how it is going."""
    shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in entry.items() if v is not None)  # fmt: skip
    tqdm.write(f"{label}: {shown}", file=sys.stderr)


# `nestdsl eval --task recall` (nestdsl/commands/eval.py reads these three names).
_NUMBERS = {"steps": int, "batch_size": int, "lr": float, "weight_decay": float,
            "grad_clip": float, "eval_rows": int, "heads": int, "layers": int, "vocab": int}  # fmt: skip
FLAGS = {
    "grid": {
        "action": "append", "metavar": "K=V,...",
        "help": f"grid points, keys {', '.join(GRID_KEYS)}; '/' lists values (default "
        f"{','.join(f'{k}={v}' for k, v in GRID_KEYS.items())}), repeatable",
    },
    "work_dir": WORK_DIR_FLAG,
    **{
        name: {"type": kind, "metavar": "X", "help": f"default {getattr(RecallSettings(), name)}"}
        for name, kind in _NUMBERS.items()
    },
}  # fmt: skip


def run_cli(subject: str, given: dict, context) -> dict:
    from nestdsl.eval.grid import parse_grid

    if context.run_folder:
        raise UserError("recall trains from scratch: give a spec (name or file), not a run folder")
    points = parse_grid(given.pop("grid", None) or [], GRID_KEYS)
    work_dir = given.pop("work_dir", None)
    settings = RecallSettings(**given, seed=context.seed)
    if work_dir is None:
        work_dir = default_work_dir("recall", subject, settings, context)
    return run_recall(
        subject, points, settings, context.device, context.overrides, context.progress, work_dir
    )


def summary(result: dict) -> str:
    lines = [f"{result['spec']}: MQAR recall, {result['settings']['steps']} steps"]
    lines.append(f"{'L':>5} {'N':>4} {'d_model':>8} {'accuracy':>9} {'rows ok':>8}  note")
    for p in result["points"]:
        note = f"diverged at step {p['diverged_at']}" if p["diverged_at"] is not None else ""
        lines.append(
            f"{p['L']:>5} {p['N']:>4} {p['d_model']:>8} {p['accuracy']:>9.3f} "
            f"{p['rows_all_correct']:>8.3f}  {note}"
        )
        if p.get("by_distance"):  # results written before it existed have none
            shown = ", ".join(f"{b['distances']}: {b['accuracy']:.3f} ({b['queries']})"
                              for b in p["by_distance"])  # fmt: skip
            lines.append(f"{'':>19} by key-to-query distance: {shown}")
    return "\n".join(lines)
