"""Matching parameter counts: the `--set` overrides that resize a spec to a target size.

`nestdsl compare --match-params` trains every spec at (about) the same number of parameters,
so that a difference in loss or recall is a difference of architecture, not of size (the
protocol of the Titans (§5) and Nested Learning (§7) comparisons, which report models at equal
parameter budgets).

How a spec is resized: only its width changes. `dims.d_model` takes a new value that is a
multiple of `dims.n_heads` (when the spec has heads), `dims.d_head` follows as
d_model / n_heads, and an integer `dims.d_ff` keeps its ratio to d_model
(`nestdsl.eval.subject.resize_overrides` writes these overrides, the same ones `nestdsl eval`
uses). Depth, head count, vocabulary and every size written as an expression of d_model
(`4 * d_model`, ...) follow from d_model unchanged.

How the width is found: the parameter count is read off the module built on the `meta` device
(`compiler/count.py`: shapes only, nothing allocated), and it grows with d_model, so doubling
(or halving) from the spec's own width brackets the target and a bisection inside the bracket
finds the smallest width whose count reaches it; that width or the one below it, whichever is
closer, is the answer. A width the spec rejects (e.g. an odd
d_head under rotary embeddings) is skipped for the next allowed one. When even the closest
count is off by more than `tolerance` (relative), a UserError says what the closest was.
"""

from __future__ import annotations

from collections.abc import Sequence

import nestdsl
from nestdsl.errors import SpecError, UserError
from nestdsl.eval.subject import Resize, resize_overrides

MAX_D_MODEL = 16384  # widths searched: up to here (a 1e9-parameter target at vocab 256 fits)


def count_params(spec: str, overrides: Sequence[str] = ()) -> int:
    """Parameters of `spec` (a shipped name or a file) with `overrides`, without allocating.

    The count is every parameter of the compiled module (trained and frozen levels alike),
    as `nestdsl show` prints it.
    """
    from nestdsl.compiler.count import count_by_level

    checked = nestdsl.load(spec, overrides=list(overrides) or None)
    return sum(level.parameters for level in count_by_level(checked.plan).values())


def _width_step(dims: dict) -> int:
    """The allowed widths are multiples of this: the head count (d_head must be whole)."""
    heads = dims.get("n_heads")
    return heads if isinstance(heads, int) and heads > 0 else 1


def match_params(
    spec: str,
    target_params: int,
    tolerance: float = 0.05,
    overrides: Sequence[str] = (),
) -> list[str]:
    """The `--set` overrides resizing `spec` to within `tolerance` of `target_params`.

    `overrides` are the user's own, applied first (e.g. another `dims.n_layers`); the returned
    list is the resize alone (apply it after them). Empty when the spec is already within
    tolerance at its own width. UserError if the spec has no `dims.d_model` or no width reaches
    the tolerance (the message gives the closest count and its width).
    """
    if target_params < 1:
        raise UserError(f"the target parameter count must be positive, got {target_params}")
    if not 0 <= tolerance < 1:
        raise UserError(f"the parameter tolerance must be in [0, 1), got {tolerance}")
    base = list(overrides)
    plain = nestdsl.load(spec, overrides=base or None)
    dims = dict(plain.spec.dims)
    name = plain.name
    if not isinstance(dims.get("d_model"), int):
        raise UserError(
            f"{name}: --match-params resizes `dims.d_model`, which this spec does not define as "
            "a number; set its size by hand with --set"
        )
    own = count_params(spec, base)
    if abs(own - target_params) <= tolerance * target_params:
        return []
    step = _width_step(dims)
    counts: dict[int, int | None] = {}  # width -> parameters (None: the spec rejects that width)

    def resize(width: int) -> list[str]:
        return resize_overrides(dims, Resize(d_model=width))

    def count(width: int) -> int | None:
        if width not in counts:
            try:
                counts[width] = count_params(spec, [*base, *resize(width)])
            except SpecError:
                counts[width] = None
        return counts[width]

    def valid_at_or_above(index: int, last: int) -> int | None:
        """The first allowed width index >= `index` whose spec is accepted."""
        while index <= last:
            if count(index * step) is not None:
                return index
            index += 1
        return None

    last = MAX_D_MODEL // step
    # Bracket the target by halving or doubling from the spec's own width (a far width costs a
    # build: widths near the answer are all the search needs), then bisect inside the bracket
    # for the smallest accepted width whose count reaches the target.
    low, high = 1, last
    if own < target_params:
        low = max(1, dims["d_model"] // step)
        while low < last:
            found = valid_at_or_above(min(2 * low, last), last)
            if found is None:
                break
            if count(found * step) >= target_params:
                high = found
                break
            low = found
    else:
        high = max(1, dims["d_model"] // step)
        while high > 1:
            found = valid_at_or_above(max(1, high // 2), high)
            if found is None or found >= high or count(found * step) < target_params:
                low = max(1, high // 2)
                break
            high = found
    while low < high:
        mid = (low + high) // 2
        found = valid_at_or_above(mid, high)
        if found is None:
            high = mid - 1
        elif count(found * step) < target_params:
            low = found + 1
        elif found < high:
            high = found
        else:  # every width in [mid, high) is rejected: the answer is `high` or below `mid`
            high = mid - 1
    # The answer is the first accepted width reaching the target or the accepted width just
    # below it, whichever is closer.
    reach = max(low, 1)
    while reach <= last and (count(reach * step) or 0) < target_params:
        reach += 1
    below = reach - 1
    while below >= 1 and count(below * step) is None:
        below -= 1
    candidates = [i * step for i in (reach, below) if 1 <= i <= last]
    if not candidates:
        raise UserError(f"{name}: no width from {step} to {MAX_D_MODEL} gives a valid spec")
    best = min(candidates, key=lambda w: (abs(counts[w] - target_params), w))
    off = abs(counts[best] - target_params) / target_params
    if off > tolerance:
        raise UserError(
            f"{name}: no d_model gives {target_params:,} parameters within {tolerance:.0%}; the "
            f"closest is d_model {best} with {counts[best]:,} ({off:.1%} off); change its depth "
            "with --set dims.n_layers=... or use a larger --param-tolerance"
        )
    return resize(best)
