"""Shared helpers for the spec-language tests: where things are, and what a diagnostic must hold.

(A plain module, not `conftest.py`: other test folders have their own `conftest` module.)
"""

from __future__ import annotations

from pathlib import Path

from nestdsl.errors import Diagnostic

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"


def shipped_spec_files() -> list[Path]:
    """Every `specs/*.yaml` of the checkout, as present when the tests run."""
    return sorted(SPECS.glob("*.yaml"))


def assert_placed(diagnostic: Diagnostic, file: str) -> None:
    """A spec-level diagnostic points into the spec: a file, a line and a column, all real."""
    assert diagnostic.pos is not None, f"no position: {diagnostic}"
    assert diagnostic.pos.file == file, diagnostic
    assert diagnostic.pos.line >= 1 and diagnostic.pos.col >= 1, diagnostic
    assert diagnostic.code != "internal", diagnostic
    assert diagnostic.message, diagnostic
