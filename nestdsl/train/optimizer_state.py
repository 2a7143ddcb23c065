"""Optimizer state in checkpoints: every trained level's optimizer as safetensors plus JSON.

A run has one torch optimizer per trained level (nestdsl.optim.levels). Its state tensors are
stored as `<level>/<parameter index>/<name>` in optimizer.safetensors; hyperparameters, the
optimizer's class and scalar state go to meta.json under `optimizers.<level>`. Checkpoints of
earlier versions held one optimizer (meta `optimizer`, tensors `<index>/<name>`) and still load
into a run with one trained level. Nothing is pickled.

A declared optimizer (nestdsl/optim/declared.py) keeps everything it needs to continue in these
two places: its memories of the gradients, their written weights and the gradient sums of a
level with a `period` are state tensors (`exp_avg`, `momentum.W1`, `pending`, ...); its settings,
`period`, `schedule` and the counters `calls` and `updates` are param-group entries (JSON).
So a level every k steps with its own schedule resumes exactly, mid-period included.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nestdsl.errors import UserError
from nestdsl.optim.levels import SINGLE_LEVEL


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: _jsonable(v) for k, v in group.items()} for group in state_dict["param_groups"]]
    return tensors, {
        "class": type(optimizer).__name__,
        "param_groups": groups,
        "scalar_state": scalars,
    }


def _levels(optimizer) -> dict[str, torch.optim.Optimizer]:
    """Level name -> torch optimizer, for a LevelOptimizers or a single torch optimizer."""
    if hasattr(optimizer, "optimizers"):
        return dict(optimizer.optimizers)
    return {SINGLE_LEVEL: optimizer}


def optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every level's state: tensors keyed "<level>/<index>/<name>", the rest per level."""
    tensors: dict[str, torch.Tensor] = {}
    infos: dict[str, dict] = {}
    for level, single in _levels(optimizer).items():
        own, infos[level] = _optimizer_parts(single)
        tensors.update({f"{level}/{key}": t for key, t in own.items()})
    return tensors, infos


def saved_group_sizes(meta: dict) -> dict[str, list[int]]:
    """Level -> the number of parameters in each optimizer group a checkpoint's meta records."""
    return {level: [len(g["params"]) for g in info["param_groups"]]
            for level, info in meta.get("optimizers", {}).items()}  # fmt: skip


def load_optimizer_state(path: Path, optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    levels = _levels(optimizer)
    if "optimizers" in meta:
        infos = meta["optimizers"]
    elif len(levels) == 1:  # earlier versions: one optimizer, tensors keyed "<index>/<name>"
        only = next(iter(levels))
        infos = {only: meta["optimizer"]}
        tensors = {f"{only}/{key}": t for key, t in tensors.items()}
    else:
        infos = {SINGLE_LEVEL: meta["optimizer"]}
    if sorted(infos) != sorted(levels):
        raise UserError(
            f"checkpoint {path} holds optimizers for levels {', '.join(sorted(infos))}, but the "
            f"run trains levels {', '.join(sorted(levels))}"
        )
    for level, single in levels.items():
        info = infos[level]
        if info["class"] != type(single).__name__:
            raise UserError(
                f"checkpoint {path} holds {info['class']} state for level `{level}`, but the run "
                f"uses {type(single).__name__}"
            )
        prefix = f"{level}/"
        own = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        try:
            single.load_state_dict(_optimizer_state_dict(own, info))
        except (ValueError, KeyError, RuntimeError) as err:
            raise UserError(
                f"checkpoint {path}: optimizer state of level `{level}` does not fit ({err})"
            ) from None


def _optimizer_state_dict(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, entries in info["scalar_state"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for group in info["param_groups"]:
        # JSON has no tuples; optimizers expect e.g. betas as a tuple.
        groups.append(
            {
                k: (tuple(v) if isinstance(v, list) and k != "params" else v)
                for k, v in group.items()
            }
        )
    return {"state": state, "param_groups": groups}
