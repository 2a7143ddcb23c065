"""Shared test helpers: shipped specs at reduced width (levels, chunks and rules unchanged)."""

from __future__ import annotations

import nestdsl

SMALL = {"d_model": 32, "n_heads": 2, "d_head": 16, "n_layers": 1, "d_ff": 64}


def small_overrides(name: str) -> list[str]:
    """`--set` overrides that shrink a shipped spec's widths (only the dims it declares)."""
    dims = nestdsl.load(name).spec.dims
    return [f"dims.{k}={v}" for k, v in SMALL.items() if k in dims]


def load_small(name: str):
    return nestdsl.load(name, small_overrides(name))
