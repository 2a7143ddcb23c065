"""Shipped specs: `nestdsl validate hope` finds `specs/hope.yaml`, from a checkout or a wheel."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from nestdsl.errors import UserError


def shipped_names() -> list[str]:
    root = resources.files("nestdsl.specs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_spec(name_or_path: str | Path) -> tuple[bytes, str]:
    """The bytes of a spec and the name to cite in messages (its path)."""
    path = Path(name_or_path)
    if path.is_file():
        try:
            return path.read_bytes(), str(path)
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from None
    if path.exists():
        raise UserError(f"{path} is not a file")
    name = str(name_or_path)
    if name.endswith((".yaml", ".yml")) or "/" in name:
        raise UserError(f"no such spec file: {name}")
    resource = resources.files("nestdsl.specs") / f"{name}.yaml"
    if resource.is_file():
        return resource.read_bytes(), f"specs/{name}.yaml"
    names = shipped_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    raise UserError(
        f"no spec file or shipped spec named `{name}` ({hint}shipped: {', '.join(names)})"
    )
