"""Outer optimizers for training compiled models, built from a spec's optimizer config dict.

Every optimizer is a set of memories of the gradients (NL §4; nestdsl/optim/declared.py is the
one implementation). `build_optimizer(params, config)` takes the dict of one trained level's
`optimizer:`: a shorthand kind with its settings, e.g.
`{"kind": "adamw", "lr": 3e-4, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8}`,
`{"kind": "m3", "lr": 3e-4, "betas": [0.9, 0.999, 0.9], "alpha": 1.0, "frequency": 8}`,
`{"kind": "delta_momentum", ...}`, `{"kind": "sgd_momentum", ...}`, `{"kind": "dmgd", ...}`
(each the shipped declaration specs/optimizers/<kind>.yaml with those settings), or
`{"kind": "memories", "lr": ..., "memories": {...}, "update": {...}}` declared in place; any of
them with the level options `period` and `schedule`.
`build_level_optimizers` (levels.py) makes one such optimizer per `every: step` level.
Weight decay applies to parameters with two or more dimensions only: decaying biases and norm
gains pulls them towards zero for no benefit, so they go in a group without decay, with the
parameters a compiled model names in `undecayed_parameters()` (the initial states of memories
with an output norm: compiler/modules/model.py says why).

AdamW at period 1 without its own schedule is built as `torch.optim.AdamW`: the declaration
computes the same steps (tests/optim/test_torch_equal.py), torch's fused loop is faster, as
`pick_kernels` picks the fastest exact kernel for a memory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from pydantic import ValidationError

from nestdsl.errors import UserError
from nestdsl.optim.declared import DeclaredOptimizer, newton_schulz
from nestdsl.optim.delta_momentum import DeltaMomentum
from nestdsl.optim.levels import LevelOptimizers, build_level_optimizers
from nestdsl.optim.library import optimizer, read_declaration, shipped_optimizers
from nestdsl.optim.m3 import M3
from nestdsl.spec.optimizer import SHORTHANDS, Declaration, Declared

# Level options every kind takes (not settings of the optimizer's memories).
LEVEL_OPTIONS = ("period", "schedule")


def _defaults(kind: str) -> dict:
    """A shorthand's settings with their defaults: its shipped declaration's."""
    settings = read_declaration(SHORTHANDS[kind]).settings
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


ADAMW_DEFAULTS = _defaults("adamw")
M3_DEFAULTS = _defaults("m3")  # the spec schema's defaults too (a test checks they agree)
DELTA_MOMENTUM_DEFAULTS = _defaults("delta_momentum")
KIND_DEFAULTS = {kind: _defaults(kind) for kind in SHORTHANDS}


def _settings(config: dict) -> tuple[str, dict, dict]:
    """The kind, its full settings (defaults filled in) and the level options; UserError on
    unknown keys."""
    kind = str(config.get("kind", "adamw")).lower()
    options = {k: config[k] for k in LEVEL_OPTIONS if k in config and config[k] is not None}
    if kind == "memories":  # through the schema: its defaults filled in, its checks run
        try:
            node = Declared.model_validate({**config, "kind": kind}).model_dump(mode="json")
        except ValidationError as err:
            raise UserError(f"bad `kind: memories` optimizer: {err}") from None
        settings = {k: v for k, v in node.items() if k != "kind" and k not in LEVEL_OPTIONS}
        return kind, settings, options
    if kind not in KIND_DEFAULTS:
        raise UserError(
            f"unknown optimizer kind {kind!r}: expected one of {', '.join(KIND_DEFAULTS)}, memories"
        )
    defaults = KIND_DEFAULTS[kind]
    settings = dict(defaults)
    for key, value in config.items():
        if key == "kind" or key in LEVEL_OPTIONS:
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
        settings[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    want = len(defaults["betas"]) if "betas" in defaults else None
    if want is not None and len(settings["betas"]) != want:
        raise UserError(f"optimizer {kind!r} takes {want} betas, got {list(settings['betas'])}")
    return kind, settings, options


def undecayed_of(model: torch.nn.Module) -> set[str]:
    """Names of `model`'s parameters that weight decay leaves alone (besides vectors)."""
    return set(getattr(model, "undecayed_parameters", set)())


def _param_groups(params: Iterable, weight_decay: float, undecayed: Collection[str]) -> list[dict]:
    named = [p if isinstance(p, tuple) else (None, p) for p in params]
    named = [(n, p) for n, p in named if p.requires_grad]
    if not named:
        raise UserError("the model has no trainable parameters")
    matrices = [p for n, p in named if p.ndim >= 2 and n not in undecayed]
    others = [p for n, p in named if p.ndim < 2 or n in undecayed]
    groups = [{"params": matrices, "weight_decay": weight_decay}]
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    params: Iterable, config: dict, undecayed: Collection[str] = ()
) -> torch.optim.Optimizer:
    """An optimizer for `params` (tensors or (name, tensor) pairs) from a spec's config dict;
    the parameters named in `undecayed` get no weight decay."""
    kind, settings, options = _settings(config)
    groups = _param_groups(params, float(settings.get("weight_decay", 0.0)), set(undecayed))
    try:
        if kind == "memories":
            body = {k: settings.pop(k) for k in ("settings", "decoupled", "memories", "update")
                    if k in settings}  # fmt: skip
            declaration = Declaration.model_validate(body)
            values = {**declaration.settings, **settings}
            return DeclaredOptimizer(groups, declaration, values, **options)
        settings.pop("weight_decay", None)
        if kind == "adamw" and not options:
            return torch.optim.AdamW(groups, **settings)
        if kind == "m3":
            return M3(groups, **settings, **options)
        if kind == "delta_momentum":
            return DeltaMomentum(groups, **settings, **options)
        declaration = read_declaration(SHORTHANDS[kind])
        values = {**declaration.settings, **settings, "weight_decay": 0.0}
        return DeclaredOptimizer(groups, declaration, values, **options)
    except (ValueError, TypeError) as err:
        raise UserError(f"bad {kind} optimizer settings: {err}") from None


def optimizer_settings(config: dict) -> dict:
    """The effective settings (defaults filled in) as a JSON-friendly dict, for config.json."""
    kind, settings, options = _settings(config)
    return {
        "kind": kind,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        **options,
    }


def declaration_of(config: dict) -> Declaration:
    """The memories-of-gradients declaration behind an optimizer config (a shorthand's file)."""
    kind, settings, _ = _settings(config)
    if kind == "memories":
        body = {
            k: settings[k] for k in ("settings", "decoupled", "memories", "update") if k in settings
        }
        return Declaration.model_validate(body)
    return read_declaration(SHORTHANDS[kind])


def describe_optimizer(config: dict) -> str:
    """One line for `nestdsl show`: the kind, its lr, period and schedule, and its memories."""
    kind, settings, options = _settings(config)
    declaration = declaration_of(config)
    parts = [f"{kind}, lr {settings['lr']:g}"]
    if options.get("period", 1) != 1:
        parts.append(f"every {options['period']} steps (sums their gradients)")
    schedule = options.get("schedule")
    parts.append(f"own schedule {schedule['kind']}" if schedule else "the run's schedule")
    memories = ", ".join(
        f"{name} ({m.structure.kind}"
        + (f", every {_number(m.every)}" if m.every != 1 else "")
        + ")"
        for name, m in declaration.memories.items()
    )
    return f"{'; '.join(parts)}; memories: {memories}"


__all__ = [
    "M3",
    "DeclaredOptimizer",
    "DeltaMomentum",
    "LevelOptimizers",
    "build_level_optimizers",
    "build_optimizer",
    "declaration_of",
    "describe_optimizer",
    "newton_schulz",
    "optimizer",
    "optimizer_settings",
    "shipped_optimizers",
    "undecayed_of",
]


def _number(value) -> str:
    """A declaration's number as written: `8`, `0.9` or a setting's name."""
    return f"{value:g}" if isinstance(value, float) else str(value)
