"""The numbers of a comparison: each column's mean and spread over seeds, and who won it.

Columns, one per measured quantity, each with its direction:

* `parameters` (as built; information, no winner) and `tokens/s` (training throughput: tokens
  trained / training seconds from the run's metrics.jsonl, across resumes; higher wins);
* one per task metric: `bpb` (bits per byte on held-out text, lower wins), `recall L=..,N=..`
  (MQAR accuracy per grid point, higher wins), `needle 1x`, `needle 2x`, ... (needle accuracy
  at each multiple of the training length, higher wins), and for other tasks the metric their module
  names in `COMPARE_METRICS` (`{"column": ("result key", "higher" or "lower")}`), else a
  top-level number among the usual names (accuracy, bpb, ...).

Spread is the sample standard deviation over seeds (0 with one seed). A column's winner is the
best mean; when the runner-up's mean lies within the two spreads added, the win is marked as
within the spread over seeds: not a difference these seeds can tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nestdsl.train.metrics import read_metrics

FALLBACK_KEYS = (("accuracy", "higher"), ("bpb", "lower"), ("bwt", "higher"),
                 ("forgetting", "lower"), ("score", "higher"))  # fmt: skip


@dataclass
class Column:
    name: str
    better: str | None  # "higher", "lower" or None (no winner)
    values: dict[str, list[float]] = field(default_factory=dict)  # label -> one per seed

    def mean(self, label: str) -> float | None:
        vals = [v for v in self.values.get(label, []) if v is not None and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    def spread(self, label: str) -> float:
        vals = [v for v in self.values.get(label, []) if v is not None and math.isfinite(v)]
        if len(vals) < 2:
            return 0.0
        mean = sum(vals) / len(vals)
        return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))

    def winner(self) -> tuple[str | None, bool]:
        """(best label, whether the runner-up is within the spreads); (None, False) if none."""
        means = {k: self.mean(k) for k in self.values}
        ranked = [k for k in means if means[k] is not None]
        if self.better is None or not ranked:
            return None, False
        ranked.sort(key=lambda k: means[k], reverse=self.better == "higher")
        best = ranked[0]
        if len(ranked) < 2:
            return best, False
        second = ranked[1]
        close = abs(means[best] - means[second]) <= self.spread(best) + self.spread(second)
        return best, close


def tokens_per_second(run_folder, tokens_per_step: int) -> float | None:
    """Tokens trained per training second, from the run's last train record."""
    records = [r for r in read_metrics(run_folder / "metrics.jsonl") if r.get("kind") == "train"]
    if not records or not records[-1].get("elapsed_s"):
        return None
    return records[-1]["step"] * tokens_per_step / records[-1]["elapsed_s"]


def task_metrics(task: str, result: dict) -> dict[str, tuple[float | None, str]]:
    """Column name -> (value, better) for one task result."""
    from nestdsl.eval import task_module

    if task == "bpb":
        return {"bpb": (result.get("bpb"), "lower")}
    if task == "recall":
        return {
            f"recall L={p['L']},N={p['N']}" + (f",d={p['d_model']}" if "d_model" in p else ""): (
                p.get("accuracy"),
                "higher",
            )
            for p in result.get("points", [])
        }
    if task == "needle":
        lengths = result.get("accuracy_by_length", {})
        return {f"needle {m}": (_number(v), "higher") for m, v in lengths.items()}
    declared = getattr(task_module(task), "COMPARE_METRICS", None)
    if isinstance(declared, dict):
        return {f"{task} {col}": (_number(result.get(key)), better)
                for col, (key, better) in declared.items()}  # fmt: skip
    for key, better in FALLBACK_KEYS:
        if _number(result.get(key)) is not None:
            return {f"{task} {key}": (_number(result[key]), better)}
    return {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def build_columns(outcome: dict, out) -> list[Column]:
    """Every column of the table, values gathered per spec label and seed."""
    from nestdsl.compare.runs import run_dir

    settings = outcome["settings"]
    per_step = settings["batch_size"] * settings["seq_len"]
    columns: dict[str, Column] = {
        "parameters": Column("parameters", None),
        "tokens/s": Column("tokens/s", "higher"),
    }
    for entry in outcome["entries"]:
        for seed in settings["seeds"]:
            columns["parameters"].values.setdefault(entry.label, []).append(entry.params)
            speed = tokens_per_second(run_dir(out, entry, seed), per_step)
            columns["tokens/s"].values.setdefault(entry.label, []).append(speed)
            for task in settings["tasks"]:
                result = outcome["results"][entry.label, seed][task]
                for name, (value, better) in task_metrics(task, result).items():
                    column = columns.setdefault(name, Column(name, better))
                    column.values.setdefault(entry.label, []).append(value)
    return list(columns.values())
