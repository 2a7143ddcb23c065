"""The work of a comparison: one training run per (spec, seed), then each task on it.

Layout of the output folder DIR:

    DIR/settings.json                      what was compared (compare/settings.py)
    DIR/runs/<spec>/seed-<s>/              an ordinary `nestdsl train` run folder
    DIR/runs/<spec>/seed-<s>/eval/<task>.json   each task's result (as `nestdsl eval RUN` writes)

Every training goes through `nestdsl.train.train` (the loop, checkpoints and resume of
`nestdsl train`), so `nestdsl eval`, `nestdsl generate` and `nestdsl train --resume` work on
each run folder. Resuming a comparison reuses what is done: a run whose last checkpoint is at
its final step is not trained again (not even loaded), a run with an earlier checkpoint is
resumed from it, and a task result is reused when it was computed with the same task options.

Tasks that score a trained model (`bpb`, `in-context`) get the run folder. Tasks that train a
fresh model on their own data (`recall`, `needle`, `continual`) get the spec and the shared
`--set` overrides, and train at their own protocol's size (recall resizes to its grid's
d_model, needle and continual to their `--d-model`), with the run's seed. A task that draws a
figure puts it beside its result (`EvalContext.out`).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nestdsl.compare.match import count_params, match_params
from nestdsl.compare.settings import CompareSettings
from nestdsl.errors import UserError
from nestdsl.eval.subject import EvalContext
from nestdsl.train.checkpoint import write_file_atomically

# Tasks that train from scratch, so they are given a spec rather than a trained run. A task
# module may say so itself with `SUBJECT = "spec"` (or "run"); this table covers the rest.
SPEC_TASKS = {"recall", "needle", "continual"}
STEP_DIR = re.compile(r"step-(\d+)$")


@dataclass(frozen=True)
class Entry:
    """One spec as compared: its folder label, overrides (shared then resize) and size."""

    spec: str  # as given: a shipped name or a file
    label: str  # unique folder and table name
    overrides: tuple[str, ...]
    resize: tuple[str, ...]  # the part of `overrides` that --match-params chose
    params: int


def task_subject(task: str) -> str:
    from nestdsl.eval import task_module

    declared = getattr(task_module(task), "SUBJECT", None)
    if declared in ("spec", "run"):
        return declared
    return "spec" if task in SPEC_TASKS else "run"


def plan_entries(settings: CompareSettings) -> tuple[list[Entry], int | None]:
    """Every spec resolved: labels, overrides and parameter counts; the matched target."""
    import nestdsl

    shared = list(settings.overrides)
    names = [nestdsl.load(spec, overrides=shared or None).name for spec in settings.specs]
    target = None
    if settings.match_params:
        target = settings.params or count_params(settings.specs[0], shared)
    entries, seen = [], {}
    for spec, name in zip(settings.specs, names, strict=True):
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        resize = match_params(spec, target, settings.tolerance, shared) if target else []
        overrides = (*shared, *resize)
        entries.append(Entry(spec, label, overrides, tuple(resize), count_params(spec, overrides)))
    return entries, target


def run_dir(out: Path, entry: Entry, seed: int) -> Path:
    return out / "runs" / entry.label / f"seed-{seed}"


def finished_step(folder: Path) -> int:
    """The step of the run's latest checkpoint (0 when there is none)."""
    from nestdsl.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(folder / "checkpoints")
    match = STEP_DIR.search(latest.name) if latest is not None else None
    return int(match.group(1)) if match else 0


def train_config(settings: CompareSettings, seed: int):
    from nestdsl.train import TrainConfig

    steps = settings.steps
    every = settings.eval_every or max(1, steps // 10)
    return TrainConfig(
        steps=steps, batch_size=settings.batch_size, seq_len=settings.seq_len, seed=seed,
        device=settings.device, data=settings.data, eval_every=every,
        eval_batches=settings.eval_batches, ckpt_every=max(1, steps // 4), keep_checkpoints=1,
    )  # fmt: skip


def train_run(settings: CompareSettings, entry: Entry, seed: int, folder: Path) -> str:
    """Train (or resume, or reuse) one run; returns what was done: trained/resumed/reused."""
    from nestdsl.train import spec_source, train

    done = finished_step(folder)
    if done >= settings.steps:
        return "reused"
    source = spec_source(entry.spec, list(entry.overrides))
    train(source, train_config(settings, seed), folder, resume=done > 0,
          progress=settings.progress)  # fmt: skip
    return "resumed" if done > 0 else "trained"


def result_path(folder: Path, task: str) -> Path:
    return folder / "eval" / f"{task}.json"


def read_result(path: Path) -> dict | None:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def run_task(
    settings: CompareSettings, entry: Entry, seed: int, folder: Path, task: str
) -> tuple[dict, str]:
    """One task's result for one run (computed, or reused from an earlier pass)."""
    from nestdsl.eval import task_module
    from nestdsl.train.distributed import resolve_device

    options = settings.task_options.get(task, {})
    path = result_path(folder, task)
    earlier = read_result(path)
    if earlier is not None and earlier.get("compare_options") == options:
        return earlier, "reused"
    on_spec = task_subject(task) == "spec"
    context = EvalContext(  # out: figures go beside the result, in the run folder's eval/
        device=resolve_device(settings.device),
        overrides=list(settings.overrides) if on_spec else [],
        seed=seed, progress=settings.progress, run_folder=not on_spec, out=str(path),
    )  # fmt: skip
    given = {k: list(v) if isinstance(v, list) else v for k, v in options.items()}
    result = task_module(task).run_cli(entry.spec if on_spec else str(folder), given, context)
    result["compare_options"] = options
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, (json.dumps(result, indent=1) + "\n").encode())
    return result, "computed"


def check_out_folder(settings: CompareSettings, out: Path) -> None:
    """Refuse to start over an earlier comparison, or to resume a different one."""
    saved_path = out / "settings.json"
    if not settings.resume:
        if saved_path.exists() or (out / "runs").exists():
            raise UserError(
                f"{out} already holds a comparison; pass --resume to continue it or "
                "--out to start a new one elsewhere"
            )
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out} exists and is not an empty folder; choose another --out")
        return
    saved = read_result(saved_path)
    if saved is None:
        raise UserError(f"nothing to resume: {saved_path} is missing or unreadable")
    fixed = settings.fixed()
    for key, value in fixed.items():
        then = saved.get(key)
        if isinstance(value, tuple):
            value = list(value)
        if then != value:
            raise UserError(
                f"{out} compared with {key} {then!r}, now {value!r}; a resumed comparison "
                "keeps its settings (only --seeds, --tasks, --task-set and --device may change)"
            )


def run_all(settings: CompareSettings, out: Path) -> dict:
    """Train every run and run every task (reusing finished work); what the report needs."""
    settings.check()
    check_out_folder(settings, out)
    entries, target = plan_entries(settings)
    out.mkdir(parents=True, exist_ok=True)
    record = {**settings.record(), "target_params": target}
    record = json.loads(json.dumps(record))  # tuples as lists, as read back on resume
    write_file_atomically(out / "settings.json", (json.dumps(record, indent=1) + "\n").encode())
    jobs = len(entries) * len(settings.seeds) * (1 + len(settings.tasks))
    bar = tqdm(total=jobs, desc="compare", unit="job", disable=not settings.progress,
               file=sys.stderr, dynamic_ncols=True, position=0)  # fmt: skip
    done: dict[tuple[str, int], dict] = {}
    actions: dict[str, int] = {}
    try:
        # Seed by seed, so a comparison stopped early has every spec at its first seeds.
        for seed in settings.seeds:
            for entry in entries:
                folder = run_dir(out, entry, seed)
                bar.set_description(f"train {entry.label} seed {seed}")
                action = train_run(settings, entry, seed, folder)
                actions[f"train {action}"] = actions.get(f"train {action}", 0) + 1
                bar.update(1)
                results = {}
                for task in settings.tasks:
                    bar.set_description(f"{task} {entry.label} seed {seed}")
                    results[task], action = run_task(settings, entry, seed, folder, task)
                    actions[f"{task} {action}"] = actions.get(f"{task} {action}", 0) + 1
                    bar.update(1)
                done[entry.label, seed] = results
    finally:
        bar.close()
    return {"settings": record, "entries": entries, "results": done, "actions": actions}
