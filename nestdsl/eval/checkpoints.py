"""Resumable evaluations: where a task keeps its checkpoints and what a saved one must match.

`recall` and `needle` save at every curve record, `continual` after every stage; all of them
in nestdsl.train.checkpoint's safetensors format (loads without running code), with the task's
own state and an `identity` (the spec, the settings, the data) under one key of meta.json. The
same command again finds its folder (`work_dir_for`: a hash of what identifies the run in the
name) and resumes from the latest save; a folder of another run is refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nestdsl.errors import UserError
from nestdsl.train.checkpoint import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
from nestdsl.train.distributed import capture_rng, restore_rng


@dataclass(frozen=True)
class Saved:
    """What the latest save held: its step, the task's own state and the in-context memory
    states (None when the task saves none)."""

    step: int
    state: dict
    memory: dict | None


@dataclass(frozen=True)
class Checkpoints:
    """A task's checkpoint folder: the meta.json key its state goes under (`section`), the
    JSON-able `identity` a save must match to be resumed, and how many saves to keep."""

    root: Path
    identity: dict
    section: str
    keep: int = 1

    def load(self, model: torch.nn.Module, optimizer) -> Saved | None:
        """Load the latest save into the model and optimizer and restore the random state;
        None when nothing was saved. UserError if the folder holds another run."""
        found = latest_checkpoint(self.root) if Path(self.root).is_dir() else None
        if found is None:
            return None
        state = dict(read_meta(found).get(self.section, {}))
        if state.pop("identity", None) != as_json(self.identity):
            raise UserError(
                f"{self.root} holds the checkpoints of another spec or other settings; "
                "give another --work-dir or delete that folder"
            )
        loaded = load_checkpoint(found, model, optimizer)
        restore_rng(loaded.rng_states[0])
        return Saved(loaded.step, state, loaded.memory_states[0] if loaded.memory_states else None)

    def save(self, step: int, model: torch.nn.Module, optimizer, state: dict,
             memory: dict | None = None) -> None:  # fmt: skip
        """Save the model, optimizer, random state, the task's JSON-able `state` and the
        in-context `memory` states (optional) as of `step`."""
        save_checkpoint(
            self.root, step=step, model=model, optimizer=optimizer, rng_states=[capture_rng()],
            memory_states=None if memory is None else [{k: v.cpu() for k, v in memory.items()}],
            keep=self.keep, resume_hint="run the same command again",
            extra={self.section: {"identity": self.identity, **state}},
        )  # fmt: skip


def as_json(value):
    """`value` as it reads back from JSON (tuples become lists), for comparing with a saved one."""
    return json.loads(json.dumps(value))


def work_dir_for(task: str, name: str, key: dict, parent: Path = Path("runs/eval")) -> Path:
    """`<parent>/<name>-<task>-<hash of key>`: one folder per spec and settings, so the same
    command finds its own checkpoints and another run (another seed, say) never reads them."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(parent) / f"{name}-{task}-{digest}"
