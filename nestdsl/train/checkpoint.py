"""Checkpoints: what they hold, how they are written without ever being left half-written.

Layout of `RUN/checkpoints/`:

    step-00000100/            one complete checkpoint per directory
        model.safetensors     weights (tied tensors stored once; meta.json lists the aliases)
        optimizer.safetensors optimizer state tensors, keyed "<level>/<param index>/<name>"
        rng.safetensors       torch CPU (and CUDA) generator states, keyed "<rank>/..."
        memory.safetensors    in-context memory state, keyed "<rank>/<name>" (runs that carry it)
        meta.json             step, scalars, python/numpy RNG, shapes, SHA-256 of every file
    latest                    the name of the newest complete checkpoint

Only safetensors and JSON are read back, so loading a checkpoint never runs code (no pickle).

A checkpoint is written into a temporary directory next to the others, every file is fsynced,
then the directory is renamed into place (`os.replace`, atomic on POSIX) and `latest` is
replaced atomically the same way. A crash or kill at any moment therefore leaves either the old
or the new checkpoint as `latest`, never a torn one; leftover temporary directories are removed
by the next save. Files are checked against their SHA-256 when loaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from nestdsl.errors import UserError
from nestdsl.train.optimizer_state import load_optimizer_state, optimizer_state

FORMAT = "nestdsl-checkpoint-1"
STEP_DIR = re.compile(r"^step-(\d{8})$")
LATEST = "latest"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (e.g. disk full); the previous one is intact."""


# ----------------------------------------------------------------------------- durable writes


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file (a separate function so tests can fail or kill in the middle)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (directories are fsynced through an fd on POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds: rename atomicity still holds
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- what is stored


def model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Copies of the model's state on the CPU, tied tensors once, and the alias -> name map."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        if tensor.numel():
            identity = (
                tensor.device,
                tensor.data_ptr(),
                tensor.dtype,
                tuple(tensor.shape),
                tensor.stride(),
            )
            if identity in seen:
                aliases[name] = seen[identity]
                continue
            seen[identity] = name
        tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return tensors, aliases


def parameter_table(model: torch.nn.Module) -> dict[str, dict]:
    """Name -> shape and dtype of everything in the model's state dict, to detect mismatches."""
    return {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in model.state_dict().items()
    }


def _ranked(per_rank: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        f"{rank}/{name}": t.detach().to("cpu", copy=True).contiguous()
        for rank, tensors in enumerate(per_rank)
        for name, t in tensors.items()
    }


def _unranked(tensors: dict[str, torch.Tensor], world_size: int) -> list[dict[str, torch.Tensor]]:
    per_rank: list[dict[str, torch.Tensor]] = [{} for _ in range(world_size)]
    for key, tensor in tensors.items():
        rank, name = key.split("/", 1)
        per_rank[int(rank)][name] = tensor
    return per_rank


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer,
    rng_states: list[dict],
    memory_states: list[dict[str, torch.Tensor]] | None,
    extra: dict,
    keep: int,
    resume_hint: str = "rerun with --resume",
) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, keep the last `keep`.

    `optimizer` is a torch optimizer or a LevelOptimizers (one per trained level).
    `rng_states` and `memory_states` hold one entry per rank. `extra` is stored in meta.json
    (spec identity, loop counters). Raises CheckpointWriteError on OSError (disk full...), whose
    message ends with `resume_hint`: how the command that saved resumes.
    """
    root = Path(root)
    weights, aliases = model_tensors(model)
    opt_tensors, opt_infos = optimizer_state(optimizer)
    rng_tensors: dict[str, torch.Tensor] = {}
    rng_json = []
    for rank, rng in enumerate(rng_states):
        rng_tensors[f"{rank}/torch"] = rng["torch"]
        for i, cuda_state in enumerate(rng.get("cuda", [])):
            rng_tensors[f"{rank}/cuda/{i}"] = cuda_state
        rng_json.append({k: v for k, v in rng.items() if k not in ("torch", "cuda")})
    files = {
        "model.safetensors": save_safetensors(weights),
        "optimizer.safetensors": save_safetensors(opt_tensors),
        "rng.safetensors": save_safetensors(rng_tensors),
    }
    if memory_states is not None:
        files["memory.safetensors"] = save_safetensors(_ranked(memory_states))
    meta = {
        "format": FORMAT,
        "step": step,
        "parameters": parameter_table(model),
        "aliases": aliases,
        "optimizers": opt_infos,
        "rng": rng_json,
        "world_size": len(rng_states),
        "memory_state": memory_states is not None,
        **extra,
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    previous = latest_checkpoint(root) if root.exists() else None
    if previous == final:
        # The same step again (a resume never re-saves its own step, but be safe): the state is
        # the one already saved, and replacing the live checkpoint in place is not atomic.
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root)
        tmp.mkdir()
        for name, data in files.items():
            _write_file(tmp / name, data)
        _write_file(tmp / "meta.json", json.dumps(meta, indent=1).encode())
        fsync_dir(tmp)
        if final.exists():  # an orphan from a crash between rename and pointer update
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        write_file_atomically(root / LATEST, final.name.encode())
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = (
            f"the last good checkpoint ({previous.name}) is intact"
            if previous
            else "no earlier checkpoint exists"
        )
        reason = (
            "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        )
        raise CheckpointWriteError(
            f"could not write checkpoint {final} ({reason}); {kept}; fix this and {resume_hint}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, keep)
    return final


def remove_leftovers(root: Path) -> None:
    """Delete temporary directories left by a save that was killed half-way."""
    for entry in Path(root).glob(".tmp-*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def step_dirs(root: Path) -> list[Path]:
    """Complete checkpoint directories under `root`, oldest first."""
    if not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names)."""
    current = latest_checkpoint(root)
    dirs = [p for p in step_dirs(root) if p != current]
    surplus = len(dirs) + 1 - max(1, keep)
    for path in dirs[: max(0, surplus)]:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names; the newest step directory if there is no pointer; or None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.exists():
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if not STEP_DIR.match(name):
            raise UserError(
                f"checkpoint pointer {pointer} is corrupt (it should name a step-NNNNNNNN folder)"
            )
        if not (root / name).is_dir():
            raise UserError(f"checkpoint pointer {pointer} names {name}, which does not exist")
        return root / name
    dirs = step_dirs(root)
    return dirs[-1] if dirs else None


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    meta: dict
    rng_states: list[dict]  # one per rank that saved it
    memory_states: list[dict[str, torch.Tensor]] | None


def _read_verified(path: Path, name: str, expected_sha: str | None) -> bytes:
    try:
        data = (path / name).read_bytes()
    except OSError as err:
        raise UserError(
            f"checkpoint {path} is corrupt: cannot read {name} ({err.strerror or err})"
        ) from None
    if expected_sha is not None and _sha256(data) != expected_sha:
        raise UserError(
            f"checkpoint {path} is corrupt: {name} does not match its recorded checksum"
        )
    return data


def _parse_safetensors(path: Path, name: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise UserError(
            f"checkpoint {path} is corrupt: {name} is not valid safetensors ({err})"
        ) from None


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(_read_verified(path, "meta.json", None))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"checkpoint {path} is corrupt: meta.json is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a {FORMAT} checkpoint")
    return meta


def check_parameters(path: Path, saved: dict[str, dict], model: torch.nn.Module) -> None:
    """UserError naming the tensors whose presence, shape or dtype differ from the model's."""
    current = parameter_table(model)
    problems = []
    for name in sorted(set(saved) | set(current)):
        if name not in current:
            problems.append(f"{name} is in the checkpoint but not in the model")
        elif name not in saved:
            problems.append(f"{name} is in the model but not in the checkpoint")
        elif saved[name] != current[name]:
            problems.append(
                f"{name} has shape {saved[name]['shape']} {saved[name]['dtype']} in the checkpoint, "
                f"{current[name]['shape']} {current[name]['dtype']} in the model"
            )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(
            f"checkpoint {path} does not fit this model: {'; '.join(problems[:3])}{more}"
        )


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer=None) -> LoadedCheckpoint:
    """Verify and load checkpoint `path` into `model` (and `optimizer`); UserError if unusable."""
    path = Path(path)
    meta = read_meta(path)
    files = meta.get("files", {})
    check_parameters(path, meta.get("parameters", {}), model)

    def tensors(name: str) -> dict[str, torch.Tensor]:
        if name not in files:
            raise UserError(f"checkpoint {path} is corrupt: meta.json does not list {name}")
        return _parse_safetensors(path, name, _read_verified(path, name, files[name]))

    weights = tensors("model.safetensors")
    for alias, name in meta.get("aliases", {}).items():
        weights[alias] = weights[name]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"checkpoint {path} does not fit this model: {str(err).splitlines()[0]}"
        ) from None
    if optimizer is not None:
        load_optimizer_state(path, optimizer, tensors("optimizer.safetensors"), meta)
    world_size = int(meta.get("world_size", 1))
    rng_tensors = _unranked(tensors("rng.safetensors"), world_size)
    rng_states = []
    for rank, extra in enumerate(meta.get("rng", [])):
        cuda = [rng_tensors[rank][k] for k in sorted(rng_tensors[rank]) if k.startswith("cuda/")]
        rng_states.append(
            {"torch": rng_tensors[rank]["torch"], **({"cuda": cuda} if cuda else {}), **extra}
        )
    memory = None
    if meta.get("memory_state"):
        memory = _unranked(tensors("memory.safetensors"), world_size)
    return LoadedCheckpoint(path, int(meta["step"]), meta, rng_states, memory)


def load_weights(path: Path, model: torch.nn.Module) -> LoadedCheckpoint:
    """Load only the weights (for generation); verifies checksums like `load_checkpoint`."""
    return load_checkpoint(path, model, optimizer=None)
