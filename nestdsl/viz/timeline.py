"""The update timeline of a spec (`nestdsl viz SPEC --timeline`): when each level's memories change.

One row per in-context level, fastest at the top, over a window of tokens that starts at a
sequence start. A level `every: P` updates its memories at the end of every chunk of P tokens
(the boundaries P, 2P, ...); chunks are shaded alternately and every row numbers its boundaries
(every k-th one where there are more than 16). Resets are marked where they happen:
`reset: sequence` at the start of the window, `reset: {kind: level, level: L}` at every chunk
boundary of L. Outer (`every: step`) levels update once per optimizer step, after the whole
batch, and frozen (`every: never`) levels not at all: each gets one row saying so.
"""

from __future__ import annotations

from nestdsl.checks.levels import slowness
from nestdsl.spec.memory import LevelReset, NeverReset, SequenceReset

MIN_WINDOW = 32  # a window of 4 tokens (a Transformer's only level: every 1) shows nothing
MAX_WINDOW = 1024
MAX_TICKS = 1024  # above this many boundaries in a row, a row is drawn as one solid band
MAX_LABELS = 16  # numbers on a row's boundaries: every one, or every 2nd, 3rd, ... up to this

_UPDATE = "#1f77b4"
_RESET = "#d62728"
_SHADES = ("#e8f1fb", "#f7fafd")
_STEP_FILL = "#fdf3d8"
_NEVER_FILL = "#eeeeee"


def default_window(checked) -> int:
    """4 x the slowest in-context period, at least 32 and at most 1024 tokens."""
    periods = [lv.every for lv in checked.spec.levels.values() if isinstance(lv.every, int)]
    slowest = max(periods, default=1)
    return max(MIN_WINDOW, min(4 * slowest, MAX_WINDOW))


def _members(spec, level: str) -> list[str]:
    return [name for name, m in spec.memories.items() if m.level == level]


def _reset_points(spec, level: str, tokens: int) -> tuple[list[int], list[str]]:
    """Boundary positions where some memory of `level` is reset, and a note for the row."""
    points: set[int] = set()
    notes = []
    for name in _members(spec, level):
        reset = spec.memories[name].reset
        if isinstance(reset, SequenceReset):
            points.add(0)
        elif isinstance(reset, LevelReset):
            period = spec.levels[reset.level].every
            if isinstance(period, int):
                points.update(range(0, tokens + 1, period))
                notes.append(f"{name} resets every {period} ({reset.level})")
        elif isinstance(reset, NeverReset):
            notes.append(f"{name} never resets")
    return sorted(points), notes


def timeline_figure(checked, tokens: int | None = None):
    """A matplotlib `Figure` of the update timeline (no pyplot: nothing global is touched)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MultipleLocator

    spec = checked.spec
    tokens = tokens or default_window(checked)
    ordered = sorted(spec.levels.items(), key=lambda kv: slowness(kv[1].every))
    rows = len(ordered)
    fig = Figure(figsize=(11, 1.0 + 0.62 * rows + 0.9), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(-0.01 * tokens, 1.01 * tokens)  # room for the marks at 0 and at the end
    ax.set_ylim(rows - 0.5, -0.5)  # row 0 (the fastest level) at the top

    labels = []
    for row, (name, level) in enumerate(ordered):
        members = _members(spec, name)
        who = ", ".join(members) if members else "no memories"
        if isinstance(level.every, int):
            labels.append(f"{name} · every {level.every}\n{who}")
            _in_context_row(ax, spec, row, name, level.every, tokens)
        else:
            step = level.every == "step"
            labels.append(f"{name} · every optimizer step" if step else f"{name} · never")
            text = (
                "updates once per optimizer step (after the whole batch), never within a sequence"
                if step
                else "never updates (frozen)"
            )
            box = _row_box(row, tokens, _STEP_FILL if step else _NEVER_FILL, None if step else "//")
            ax.add_patch(box)
            ax.text(tokens / 2, row, text, ha="center", va="center", fontsize=9,
                    color="#5b4a12" if step else "#555555")  # fmt: skip

    ax.set_yticks(range(rows), labels, fontsize=8.5)
    ax.xaxis.set_major_locator(MultipleLocator(_tick_step(spec, tokens)))
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(f"token position (a window of {tokens} tokens from a sequence start)")
    ax.set_title(f"{spec.name}: when each level's memories update", fontsize=12, loc="left")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    handles = [
        Line2D(
            [],
            [],
            color=_UPDATE,
            linewidth=2,
            label="chunk boundary (CMS weights step; gradients re-anchor)",
        ),
        Line2D(
            [],
            [],
            color=_RESET,
            marker="v",
            linestyle="none",
            markersize=7,
            label="reset to the initial state",
        ),
        Patch(facecolor=_SHADES[0], edgecolor="#bbbbbb", label="one chunk"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8.5, frameon=False)
    return fig


def _tick_step(spec, tokens: int) -> int:
    """Ticks on the slowest in-context chunk boundaries (or a multiple), at most 16 of them."""
    periods = [lv.every for lv in spec.levels.values() if isinstance(lv.every, int)]
    slowest = max(periods, default=1)
    step = slowest
    while tokens / step > 16:
        step += slowest
    return step


def labelled_boundaries(boundaries: list[int]) -> list[int]:
    """The boundaries a row numbers: all of them, or every k-th (the last of each k) so that at
    most MAX_LABELS numbers fit; every row gets numbers, not only the slow ones."""
    step = -(-len(boundaries) // MAX_LABELS)  # ceil
    return boundaries[step - 1 :: step]


def _row_box(row: int, tokens: int, color: str, hatch: str | None = None):
    from matplotlib.patches import Rectangle

    return Rectangle((0, row - 0.32), tokens, 0.64, facecolor=color, edgecolor="#cccccc",
                     linewidth=0.6, hatch=hatch)  # fmt: skip


def _in_context_row(ax, spec, row: int, name: str, period: int, tokens: int) -> None:
    from matplotlib.patches import Rectangle

    boundaries = list(range(period, tokens + 1, period))
    if len(boundaries) > MAX_TICKS:
        ax.add_patch(_row_box(row, tokens, _UPDATE))
        ax.text(tokens / 2, row, f"updates every {period} tokens (too dense to draw)",
                ha="center", va="center", fontsize=8, color="white")  # fmt: skip
    else:
        for k, start in enumerate(range(0, tokens, period)):
            width = min(period, tokens - start)
            ax.add_patch(Rectangle((start, row - 0.32), width, 0.64, linewidth=0,
                                   facecolor=_SHADES[k % 2]))  # fmt: skip
        width = 0.8 if len(boundaries) > 128 else 1.6
        ax.vlines(boundaries, row - 0.3, row + 0.3, color=_UPDATE, linewidth=width)
        for b in labelled_boundaries(boundaries):
            ax.text(b, row - 0.36, str(b), ha="center", va="bottom", fontsize=6.5,
                    color="#555555")  # fmt: skip
    resets, notes = _reset_points(spec, name, tokens)
    if resets:
        ax.plot(resets, [row - 0.3] * len(resets), linestyle="none", marker="v", markersize=7,
                color=_RESET, clip_on=False, zorder=5)  # fmt: skip
    if notes:
        ax.text(tokens, row + 0.42, "; ".join(notes), ha="right", va="top", fontsize=7,
                color=_RESET)  # fmt: skip
