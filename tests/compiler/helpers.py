"""Shared test helpers: shipped specs at reduced width (levels, chunks and rules unchanged)."""

from __future__ import annotations

import nestdsl

SMALL = {"d_model": 32, "n_heads": 2, "d_head": 16, "n_layers": 1, "d_ff": 64}


def small_overrides(name: str) -> list[str]:
    """`--set` overrides that shrink a shipped spec's widths (only the dims it declares, never
    wider than the spec: atlas's heads of 8 stay 8 wide, its feature map grows as d_head^2)."""
    dims = nestdsl.load(name).spec.dims
    return [f"dims.{k}={min(v, dims[k]) if isinstance(dims[k], int) else v}"
            for k, v in SMALL.items() if k in dims]  # fmt: skip


def load_small(name: str):
    return nestdsl.load(name, small_overrides(name))
