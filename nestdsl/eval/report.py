"""Evaluation results on disk and on screen: the JSON file and a short table.

The JSON file is written atomically (a reader never sees half a file); the table prints one line
per recall grid point, or the bpb line, so a user sees the numbers without opening the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from nestdsl.errors import UserError
from nestdsl.train.checkpoint import write_file_atomically


def write_result(result: dict, path: str | Path) -> Path:
    """Write `result` as indented JSON to `path` (folders created); UserError if impossible."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, (json.dumps(result, indent=1) + "\n").encode())
    except OSError as err:
        raise UserError(f"cannot write the result file {path}: {err.strerror or err}") from None
    return path


def default_result_path(subject: str, task: str, spec_name: str, run_folder: bool) -> Path:
    """`RUN/eval/<task>.json` for a run folder, else `runs/eval/<spec>-<task>.json`."""
    if run_folder:
        return Path(subject) / "eval" / f"{task}.json"
    return Path("runs") / "eval" / f"{spec_name}-{task}.json"


def summary(result: dict) -> str:
    """A few human lines for a result (the JSON holds everything)."""
    if result["task"] == "bpb":
        return (
            f"{result['spec']}: {result['bpb']:.4f} bits per byte over {result['bytes']:,} "
            f"held-out bytes (trained steps: {result['trained_steps']})"
        )
    lines = [f"{result['spec']}: MQAR recall, {result['settings']['steps']} steps"]
    lines.append(f"{'L':>5} {'N':>4} {'d_model':>8} {'accuracy':>9} {'rows ok':>8}  note")
    for p in result["points"]:
        note = f"diverged at step {p['diverged_at']}" if p["diverged_at"] is not None else ""
        lines.append(
            f"{p['L']:>5} {p['N']:>4} {p['d_model']:>8} {p['accuracy']:>9.3f} "
            f"{p['rows_all_correct']:>8.3f}  {note}"
        )
    return "\n".join(lines)
