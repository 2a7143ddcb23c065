"""The wheel installs every package, the shipped specs and the corpus (pyproject lists them)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"compiler": "nestdsl.compiler", "kernels": "nestdsl.kernels", "specs": "nestdsl.specs"}


def declared() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["packages"])


def on_disk() -> set[str]:
    found = set()
    for top in ("nestdsl", "compiler", "kernels", "specs"):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            name = ".".join(parts)
            found.add(MAPPED.get(parts[0], parts[0]) + name[len(parts[0]) :])
    return found


def test_every_package_folder_is_declared():
    missing = on_disk() - declared()
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_package_data_is_declared():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    assert "*.yaml" in data["nestdsl.specs"]
    assert "*.gz" in data["nestdsl.data"]
    assert list((ROOT / "nestdsl" / "data").glob("*.gz")), "the embedded corpus is missing"
