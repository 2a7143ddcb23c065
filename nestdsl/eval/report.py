"""Evaluation results on disk and on screen: the JSON file and a short table.

The JSON file is written atomically (a reader never sees half a file), under a default path
that says which subject and task it holds; each task's own `summary` prints the numbers.
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
