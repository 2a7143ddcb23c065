"""Outer optimizers for training compiled models, built from a spec's optimizer config dict.

`build_optimizer(params, config)` takes the dict of one trained level's `optimizer:`, e.g.
`{"kind": "adamw", "lr": 3e-4, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8}` or
`{"kind": "m3", "lr": 3e-4, "betas": [0.9, 0.999, 0.9], "alpha": 1.0, "frequency": 8}` or
`{"kind": "delta_momentum", "lr": 3e-4, "momentum": 0.9, "forget": 1.0}`.
`build_level_optimizers` (levels.py) makes one such optimizer per `every: step` level.
Weight decay applies to parameters with two or more dimensions only: decaying biases and norm
gains pulls them towards zero for no benefit, so they go in a group without decay.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nestdsl.errors import UserError
from nestdsl.optim.delta_momentum import DeltaMomentum
from nestdsl.optim.levels import LevelOptimizers, build_level_optimizers
from nestdsl.optim.m3 import M3, newton_schulz

# Accepted keys per optimizer kind, with defaults ("kind" itself is always accepted).
ADAMW_DEFAULTS = {"lr": 3e-4, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}
M3_DEFAULTS = {  # the spec schema's defaults, so a config dict from a spec and from code agree
    "lr": 3e-4,
    "weight_decay": 0.0,
    "betas": (0.9, 0.999, 0.9),
    "alpha": 1.0,
    "frequency": 8,
    "ns_steps": 5,
    "ns_kind": "quintic",
    "eps": 1e-8,
    "momentum_decay": 1.0,
    "variance_decay": 1.0,
}
DELTA_MOMENTUM_DEFAULTS = {  # the spec schema's defaults too
    "lr": 3e-4,
    "momentum": 0.9,
    "forget": 1.0,
    "weight_decay": 0.0,
    "eps": 1e-8,
}
KIND_DEFAULTS = {
    "adamw": ADAMW_DEFAULTS,
    "m3": M3_DEFAULTS,
    "delta_momentum": DELTA_MOMENTUM_DEFAULTS,
}


def _settings(config: dict) -> tuple[str, dict]:
    """The optimizer kind and its full settings (defaults filled in); UserError on unknown keys."""
    kind = str(config.get("kind", "adamw")).lower()
    if kind not in KIND_DEFAULTS:
        raise UserError(
            f"unknown optimizer kind {kind!r}: expected one of {', '.join(KIND_DEFAULTS)}"
        )
    defaults = KIND_DEFAULTS[kind]
    settings = dict(defaults)
    for key, value in config.items():
        if key == "kind":
            continue
        if kind == "m3" and key in ("beta1", "beta2", "beta3"):
            betas = list(settings["betas"])
            betas[int(key[-1]) - 1] = float(value)
            settings["betas"] = tuple(betas)
            continue
        if key not in defaults:
            raise UserError(
                f"optimizer {kind!r} has no setting {key!r}; known: {', '.join(sorted(defaults))}"
            )
        settings[key] = tuple(value) if key == "betas" else value
    want = 3 if kind == "m3" else 2
    if "betas" in settings and len(settings["betas"]) != want:
        raise UserError(f"optimizer {kind!r} takes {want} betas, got {list(settings['betas'])}")
    return kind, settings


def _param_groups(params: Iterable, weight_decay: float) -> list[dict]:
    tensors = [p[1] if isinstance(p, tuple) else p for p in params]
    tensors = [p for p in tensors if p.requires_grad]
    if not tensors:
        raise UserError("the model has no trainable parameters")
    matrices = [p for p in tensors if p.ndim >= 2]
    others = [p for p in tensors if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}]
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable, config: dict) -> torch.optim.Optimizer:
    """An optimizer for `params` (tensors or (name, tensor) pairs) from a spec's config dict."""
    kind, settings = _settings(config)
    groups = _param_groups(params, float(settings.pop("weight_decay")))
    try:
        if kind == "adamw":
            return torch.optim.AdamW(groups, **settings)
        if kind == "delta_momentum":
            return DeltaMomentum(groups, **settings)
        return M3(groups, **settings)
    except (ValueError, TypeError) as err:
        raise UserError(f"bad {kind} optimizer settings: {err}") from None


def optimizer_settings(config: dict) -> dict:
    """The effective settings (defaults filled in) as a JSON-friendly dict, for config.json."""
    kind, settings = _settings(config)
    return {
        "kind": kind,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
    }


__all__ = [
    "M3",
    "DeltaMomentum",
    "LevelOptimizers",
    "build_level_optimizers",
    "build_optimizer",
    "newton_schulz",
    "optimizer_settings",
]
