"""The `needle` task: train a spec from scratch to retrieve a needle, test it past that length.

Protocol (single-needle retrieval of RULER, Hsieh et al. 2024, S-NIAH-1/2/3, as NL-arXiv
Table 1 and Titans §5.4 report it, at byte level and trained from scratch; data in haystack.py):

* a fresh model is compiled from the spec resized to `d_model` 64, 2 heads (d_head = d_model /
  heads), 2 layers and the 256 bytes (`Resize`, as `recall` does), and trained on needle rows of
  `train_length` L = 128 bytes: the `--kinds` of needle in turn (pass-key and number by
  default, UUID on request), each at a depth drawn uniformly from [0, 1], in a haystack cut from
  the *training* part of the corpus (the embedded Shakespeare, or `--data`); every step draws a
  fresh batch seeded by the step. The loss is the cross-entropy of the answer bytes only. The
  optimizer is recall's: AdamW (lr 2e-3, weight decay 0.1 on matrices), one-cycle schedule
  (`synthetic.one_cycle`), gradient norm clipped at 1;
* it is then tested at lengths `m * L` for each multiple m of `--lengths` (1, 2, 4, 8: 128 to
  1,024 bytes), each depth of `--depths` (0, 0.25, 0.5, 0.75, 1) and each needle kind, on
  `eval_rows` rows per cell whose haystack comes from the *validation* part of the corpus and
  whose seed names the cell (so a cell's rows do not depend on which other cells run);
* a row scores 1 when the argmax is right at every answer byte (greedy decoding after the query
  would write the whole answer) and 0 otherwise; `byte_accuracy` is the fraction of answer bytes
  right. `accuracy` of a cell is the mean over its rows; the heat map (depth x length, one panel
  per kind and one for their mean) is a PNG beside the JSON result.

The defaults are sized for a 2-core CPU, a few minutes per spec (2,000 steps of 16 rows and
the 40 test cells took 2 min 42 s of CPU time for the Transformer). Measured there: at L = 256
with all three kinds, 1,000 steps left the Transformer at 0 whole answers (a third of the
answer bytes right), while L = 128 with pass-key and number reached 0.82 at 1x L after 2,000
steps. A UUID row needs up to 119 bytes of needle, query and answer, so UUIDs want
`--train-length 256` or more and more steps (`--device cuda`). A model that has not learned to
retrieve at L scores near 0 everywhere: raise `--steps` first.
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import nestdsl
from nestdsl.data.batches import step_seed
from nestdsl.data.corpus import corpus_fingerprint, load_corpus, split_corpus
from nestdsl.errors import UserError
from nestdsl.eval.checkpoints import Checkpoints
from nestdsl.eval.haystack import KINDS, answer_scores, longest_overhead, needle_batch
from nestdsl.eval.subject import Resize, load_resized
from nestdsl.eval.synthetic import WORK_DIR_FLAG, default_work_dir, train_on_rows

VOCAB = 256  # bytes


@dataclass(frozen=True)
class NeedleSettings:
    """How the model is trained and tested (defaults: a few CPU minutes, see the docstring)."""

    train_length: int = 128
    lengths: tuple[int, ...] = (1, 2, 4, 8)  # test lengths as multiples of train_length
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    kinds: tuple[str, ...] = ("passkey", "number")  # "uuid" needs a longer train_length
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    eval_rows: int = 16  # rows per (kind, depth, length) cell
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    data: str | None = None
    seed: int = 0
    log_every: int = 50

    def check(self) -> None:
        for name in ("train_length", "steps", "batch_size", "eval_rows", "d_model", "heads",
                     "layers", "log_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(f"needle: {name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"needle: the learning rate must be positive, got {self.lr}")
        if not self.lengths or any(m < 1 for m in self.lengths):
            raise UserError(f"needle: length multiples must be positive, got {self.lengths}")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise UserError(f"needle: depths must lie in [0, 1], got {self.depths}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise UserError(f"needle: unknown needle kinds {unknown}; known: {', '.join(KINDS)}")
        need = max(longest_overhead(k) for k in self.kinds) + 1
        if self.train_length < need:
            raise UserError(
                f"needle: --train-length {self.train_length} cannot hold a needle of kind "
                f"{', '.join(self.kinds)} with its query, answer and any haystack; use at least {need}"
            )


def train_model(checked, train_text: bytes, settings: NeedleSettings, device, progress: bool,
                checkpoints: Checkpoints | None = None):  # fmt: skip
    """A fresh model trained on needle rows of `train_length`; (model, training record).
    `checkpoints` (optional) saves the training at every record and resumes from the latest."""
    torch.manual_seed(settings.seed)
    model = nestdsl.compile(checked).to(device)

    def rows(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return needle_batch(train_text, settings.train_length, settings.batch_size,
                            step_seed(settings.seed, "needle-train", step), settings.kinds)  # fmt: skip

    trained = train_on_rows(model, rows, settings, device, memories=set(checked.spec.memories),
                            desc=f"needle {checked.name}", progress=progress,
                            checkpoints=checkpoints)  # fmt: skip
    return model, trained


@torch.no_grad()
def score_cells(model, text: bytes, settings: NeedleSettings, device, progress: bool) -> list:
    """Accuracy and byte accuracy of every (kind, depth, length) cell on held-out rows."""
    model.eval()
    cells = [(k, d, m) for m in settings.lengths for d in settings.depths for k in settings.kinds]
    out = []
    for kind, depth, multiple in tqdm(cells, desc="needle test", disable=not progress,
                                      file=sys.stderr, leave=False, dynamic_ncols=True):  # fmt: skip
        length = multiple * settings.train_length
        seed = step_seed(settings.seed, f"needle-heldout/{kind}/{depth}/{length}", 0)
        inputs, labels = needle_batch(text, length, settings.eval_rows, seed, (kind,), depth)
        exact, fraction = [], []
        for start in range(0, settings.eval_rows, settings.batch_size):
            x = inputs[start : start + settings.batch_size].to(device)  # [b, length]
            logits, _ = model(x)  # [b, length, 256]
            whole, part = answer_scores(logits.cpu(), labels[start : start + settings.batch_size])
            exact.append(whole)
            fraction.append(part)
        out.append({
            "kind": kind, "depth": depth, "multiple": multiple, "length": length,
            "accuracy": round(torch.cat(exact).mean().item(), 6),
            "byte_accuracy": round(torch.cat(fraction).mean().item(), 6),
        })  # fmt: skip
    return out


def by_length(cells: list[dict], lengths, key: str = "accuracy") -> dict[str, float]:
    """Mean `key` over kinds and depths at each length multiple, keyed `"1x"`, `"2x"`, ..."""
    out = {}
    for m in lengths:
        values = [c[key] for c in cells if c["multiple"] == m]
        out[f"{m}x"] = round(sum(values) / max(1, len(values)), 6)
    return out


def run_needle(
    spec: str,
    settings: NeedleSettings = NeedleSettings(),
    device: torch.device | str = "cpu",
    overrides: list[str] = (),
    progress: bool = True,
    work_dir: str | Path | None = None,
) -> dict:
    """Train `spec` on needle rows and test it over depths and lengths; a JSON-able result.

    With a `work_dir` the training is checkpointed there at every curve record, and the same
    call again resumes at the last one; the checkpoints are removed once the model is scored.
    """
    settings.check()
    device = torch.device(device)
    split = split_corpus(load_corpus(settings.data))
    size = Resize(settings.d_model, settings.heads, settings.layers, VOCAB)
    checked = load_resized(spec, size, list(overrides))
    checkpoints = None
    if work_dir is not None:
        identity = {"spec": checked.spec.model_dump(mode="json"), "settings": asdict(settings),
                    "text": corpus_fingerprint(split.train)}  # fmt: skip
        checkpoints = Checkpoints(Path(work_dir) / "checkpoints", identity, "synthetic")
    model, training = train_model(checked, split.train, settings, device, progress, checkpoints)
    cells = score_cells(model, split.validation, settings, device, progress)
    if checkpoints is not None:
        shutil.rmtree(checkpoints.root, ignore_errors=True)
    return {
        "task": "needle",
        "spec": checked.name,
        "protocol": "RULER S-NIAH (pass-key, number, UUID) at byte level, trained from scratch "
        "at train_length, tested at multiples of it; whole answer right by argmax",
        "settings": {**asdict(settings), "overrides": list(overrides), "device": str(device)},
        "training": training,
        "accuracy_by_length": by_length(cells, settings.lengths),
        "byte_accuracy_by_length": by_length(cells, settings.lengths, "byte_accuracy"),
        "cells": cells,
        **({} if work_dir is None else {"work_dir": str(work_dir)}),
    }


def heatmap(result: dict):
    """The result's heat map figure: depth x length, a panel per kind and one for their mean."""
    from nestdsl.eval.plots import heatmap_figure

    s = result["settings"]
    depths, multiples, kinds = s["depths"], s["lengths"], s["kinds"]
    value = {(c["kind"], c["depth"], c["multiple"]): c["accuracy"] for c in result["cells"]}
    panels = {k: [[value[k, d, m] for m in multiples] for d in depths] for k in kinds}
    if len(kinds) > 1:
        panels["mean"] = [[sum(value[k, d, m] for k in kinds) / len(kinds) for m in multiples]
                          for d in depths]  # fmt: skip
    columns = [str(m * s["train_length"]) for m in multiples]
    title = f"{result['spec']}: needle accuracy, trained at {s['train_length']} bytes"
    return heatmap_figure(panels, [f"{d:g}" for d in depths], columns, title, "depth", "bytes")


# `nestdsl eval --task needle` (nestdsl/commands/eval.py reads these three names).
_NUMBERS = {"steps": int, "batch_size": int, "lr": float, "eval_rows": int, "heads": int,
            "layers": int, "d_model": int, "train_length": int}  # fmt: skip
_LISTS = {"lengths": int, "depths": float, "kinds": str}
FLAGS = {
    **{
        name: {"type": kind, "metavar": "X", "help": f"default {getattr(NeedleSettings(), name)}"}
        for name, kind in _NUMBERS.items()
    },
    "lengths": {"metavar": "M,...", "help": "test lengths as multiples of --train-length "
                "(default 1,2,4,8)"},
    "depths": {"metavar": "D,...", "help": "needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)"},
    "kinds": {
        "metavar": "K,...",
        "help": f"needle kinds of {','.join(KINDS)} (default {','.join(NeedleSettings.kinds)})",
    },
    "data": {"metavar": "FILE", "help": "corpus whose held-out tail is scored"},
    "work_dir": WORK_DIR_FLAG,
}  # fmt: skip


def _parse_list(name: str, text: str, kind) -> tuple:
    try:
        values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--{name} takes values joined by commas, got `{text}`") from None
    if not values:
        raise UserError(f"--{name} needs at least one value")
    return values


def run_cli(subject: str, given: dict, context) -> dict:
    from nestdsl.eval.plots import save_png
    from nestdsl.eval.report import default_result_path

    if context.run_folder:
        raise UserError("needle trains from scratch: give a spec (name or file), not a run folder")
    for name, kind in _LISTS.items():
        if name in given:
            given[name] = _parse_list(name, given[name], kind)
    work_dir = given.pop("work_dir", None)
    settings = NeedleSettings(**given, seed=context.seed)
    if work_dir is None:
        work_dir = default_work_dir("needle", subject, settings, context)
    result = run_needle(subject, settings, context.device, context.overrides, context.progress,
                        work_dir)  # fmt: skip
    # The heat map goes beside the JSON file: `context.out` when the command passes `--out`.
    out = getattr(context, "out", None) or default_result_path(
        subject, "needle", result["spec"], False
    )
    result["heatmap"] = str(save_png(heatmap(result), Path(out).with_suffix(".png")))
    return result


def summary(result: dict) -> str:
    s = result["settings"]
    t = result["training"]
    note = f", diverged at step {t['diverged_at']}" if t["diverged_at"] is not None else ""
    lines = [f"{result['spec']}: needle accuracy (mean of {', '.join(s['kinds'])}), trained "
             f"{s['steps']} steps at {s['train_length']} bytes{note}"]  # fmt: skip
    value = {}
    for c in result["cells"]:
        value.setdefault((c["depth"], c["multiple"]), []).append(c["accuracy"])
    lines.append("depth " + "".join(f"{m * s['train_length']:>8}" for m in s["lengths"]))
    for d in s["depths"]:
        row = "".join(f"{sum(value[d, m]) / len(value[d, m]):>8.3f}" for m in s["lengths"])
        lines.append(f"{d:>5g} {row}")
    lines.append("all   " + "".join(f"{v:>8.3f}" for v in result["accuracy_by_length"].values()))
    bytes_right = result["byte_accuracy_by_length"].values()
    lines.append("bytes " + "".join(f"{v:>8.3f}" for v in bytes_right) + "  (answer bytes right)")
    if "heatmap" in result:
        lines.append(f"heat map: {result['heatmap']}")
    return "\n".join(lines)
