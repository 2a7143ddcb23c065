"""Optimizer specs by name or path, and `nestdsl.optimizer(name_or_path, params, **settings)`.

A file of specs/optimizers/ (or a user's file of the same form, `OptimizerFile` in
nestdsl/spec/optimizer.py) declares an optimizer as memories of the gradients: its settings
with their defaults, the memories, the update. `optimizer()` builds the one implementation
(`DeclaredOptimizer`) from it with the caller's settings, so any PyTorch model can train with
an optimizer written in the language:

    opt = nestdsl.optimizer("dmgd", model.parameters(), lr=1e-3)
    opt = nestdsl.optimizer("my-optimizer.yaml", model.parameters(), beta1=0.8)

The named kinds of a spec's `optimizer:` (`adamw`, `m3`, ...) are these same files
(`SHORTHANDS`): the node's fields are the file's settings.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from nestdsl.errors import SpecError, UserError
from nestdsl.optim.declared import DeclaredOptimizer
from nestdsl.spec.errors_map import diagnostics_from
from nestdsl.spec.loader import load_yaml
from nestdsl.spec.optimizer import OptimizerFile


def _folder():
    return resources.files("nestdsl.specs") / "optimizers"


def shipped_optimizers() -> list[str]:
    """Names of the shipped optimizer specs (specs/optimizers/*.yaml)."""
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".yaml"))


def parse_declaration(text: str | bytes, file: str) -> OptimizerFile:
    """An optimizer spec from its text; SpecError with YAML positions if it is wrong."""
    loaded = load_yaml(text, file)
    try:
        return OptimizerFile.model_validate(loaded.data)
    except ValidationError as err:
        raise SpecError(diagnostics_from(err, loaded.data, loaded.source)) from None


@functools.cache
def _shipped(name: str) -> OptimizerFile:
    resource = _folder() / f"{name}.yaml"
    return parse_declaration(resource.read_bytes(), f"specs/optimizers/{name}.yaml")


def read_declaration(name_or_path: str | Path) -> OptimizerFile:
    """A shipped optimizer by name (`delta-momentum` or `delta_momentum`) or a file's."""
    path = Path(name_or_path)
    if path.is_file():
        try:
            text = path.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from None
        return parse_declaration(text, str(path))
    name = str(name_or_path).replace("_", "-")
    names = shipped_optimizers()
    if name in names:
        return _shipped(name)
    if str(name_or_path).endswith((".yaml", ".yml")) or "/" in str(name_or_path):
        raise UserError(f"no such optimizer spec file: {name_or_path}")
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    raise UserError(
        f"no optimizer spec file or shipped optimizer named `{name_or_path}` "
        f"({hint}shipped: {', '.join(names)})"
    )


def settings_of(declaration: OptimizerFile, given: dict) -> dict:
    """The file's settings with `given` on top; UserError for a setting it does not have."""
    settings = dict(declaration.settings)
    unknown = [k for k in given if k not in settings]
    if unknown:
        raise UserError(
            f"optimizer `{declaration.optimizer}` has no setting "
            f"{', '.join(repr(k) for k in unknown)}; known: {', '.join(sorted(settings))}"
        )
    for key, value in given.items():
        settings[key] = list(value) if isinstance(value, tuple) else value
    lengths = {k: len(v) for k, v in declaration.settings.items() if isinstance(v, list)}
    for key, length in lengths.items():
        if not isinstance(settings[key], list) or len(settings[key]) != length:
            raise UserError(f"optimizer `{declaration.optimizer}` takes {length} {key}, "
                            f"got {settings[key]!r}")  # fmt: skip
    return settings


def optimizer(
    name_or_path: str | Path,
    params: Iterable,
    *,
    period: int = 1,
    schedule: dict | None = None,
    **settings,
) -> DeclaredOptimizer:
    """A `torch.optim.Optimizer` built from an optimizer spec (shipped name or file path).

    `settings` override the spec's (e.g. `lr`, `momentum`, `weight_decay`, `betas`); `params`
    is what torch optimizers take (tensors or param groups). `period` and `schedule` are the
    options of a level (see nestdsl/optim/declared.py). Weight decay applies to every
    parameter given, as in torch; `nestdsl train` gives norms and biases none.
    """
    declaration = read_declaration(name_or_path)
    values = settings_of(declaration, settings)
    try:
        return DeclaredOptimizer(params, declaration, values, period=period, schedule=schedule)
    except (ValueError, TypeError) as err:
        raise UserError(f"bad {declaration.optimizer} optimizer settings: {err}") from None
