"""Grids of task settings: `--grid L=64/128,N=8,d_model=64` as a list of points.

A grid is a comma-separated list of `KEY=VALUES`; `VALUES` is one integer or several joined by
`/`, and the grid is every combination (the Cartesian product, in the order written). Several
`--grid` flags add their points one after the other. Each task declares its keys and defaults;
an unknown key is refused with the known ones listed.
"""

from __future__ import annotations

import itertools

from nestdsl.errors import UserError


def parse_grid(texts: list[str], keys: dict[str, int]) -> list[dict[str, int]]:
    """The points of the `--grid` texts; `keys` maps every known key to its default value."""
    if not texts:
        return [dict(keys)]
    points: list[dict[str, int]] = []
    for text in texts:
        axes: dict[str, list[int]] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep:
                raise UserError(f"grid item `{item}` is not KEY=VALUE (e.g. --grid L=64,N=8)")
            if key not in keys:
                raise UserError(f"grid key `{key}` is unknown; known: {', '.join(keys)}")
            if key in axes:
                raise UserError(f"grid key `{key}` is given twice in `{text}`")
            try:
                values = [int(v) for v in raw.split("/")]
            except ValueError:
                raise UserError(
                    f"grid values of `{key}` must be integers joined by '/', got `{raw}`"
                ) from None
            if any(v < 1 for v in values):
                raise UserError(f"grid values of `{key}` must be positive, got `{raw}`")
            axes[key] = values
        names = list(axes)
        for combo in itertools.product(*(axes[k] for k in names)):
            points.append({**keys, **dict(zip(names, combo))})
    return points


def point_label(point: dict[str, int]) -> str:
    """`L=64,N=8,d_model=64`: a grid point as it is written on the command line."""
    return ",".join(f"{k}={v}" for k, v in point.items())
