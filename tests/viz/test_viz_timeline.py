"""The update timeline: window size, rows from the fastest level, update and reset marks."""

from __future__ import annotations

import pytest

import nestdsl
from nestdsl.checks.levels import slowness
from nestdsl.viz.timeline import (
    MAX_LABELS,
    _reset_points,
    default_window,
    labelled_boundaries,
    timeline_figure,
)


@pytest.mark.parametrize(("name", "window"), [("hope", 256), ("titans-mac", 64),
                                               ("transformer", 32)])  # fmt: skip
def test_default_window(name, window):
    assert default_window(nestdsl.load(name)) == window


def test_window_flag_sets_the_axis():
    ax = timeline_figure(nestdsl.load("titans-mac"), tokens=40).axes[0]
    assert "window of 40 tokens" in ax.get_xlabel()
    assert ax.get_xlim()[1] >= 40


def test_window_is_capped():
    checked = nestdsl.load("hope", ["levels.cms_3.every=512"])
    assert default_window(checked) == 1024


def rows(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_yticklabels()]


def test_rows_fastest_first_with_outer_row():
    fig = timeline_figure(nestdsl.load("hope"))
    assert rows(fig) == [
        "memory · every 8\nM_memory",
        "proj · every 16\nM_k, M_v, M_eta, M_alpha",
        "cms_1 · every 16\nC_1",
        "cms_2 · every 32\nC_2",
        "cms_3 · every 64\nC_3",
        "pretrain · every optimizer step",
    ]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("once per optimizer step" in t for t in texts)


def test_update_marks_at_chunk_boundaries():
    fig = timeline_figure(nestdsl.load("hope"), tokens=64)
    ax = fig.axes[0]
    # one LineCollection of update ticks per in-context row, in row order
    ticks = [c for c in ax.collections if c.get_segments()]
    xs = [sorted({seg[0][0] for seg in c.get_segments()}) for c in ticks]
    assert xs == [list(range(8, 65, 8)), list(range(16, 65, 16)), list(range(16, 65, 16)),
                  [32, 64], [64]]  # fmt: skip


def test_resets():
    spec = nestdsl.load("titans-mac").spec
    points, notes = _reset_points(spec, "token", 64)
    assert points == [0, 16, 32, 48, 64]  # A resets at each segment boundary
    assert notes == ["A resets every 16 (segment)"]
    assert _reset_points(spec, "segment", 64) == ([0], [])  # M: at the sequence start


def test_frozen_level_row():
    checked = nestdsl.load("transformer", ["levels.frozen={every: never}",
                                           "blocks.0.level=frozen"])  # fmt: skip
    fig = timeline_figure(checked)
    assert rows(fig)[-1] == "frozen · never"
    assert any("never updates" in t.get_text() for t in fig.axes[0].texts)


@pytest.mark.parametrize("name", ["hope", "titans-mac", "transformer", "gated-deltanet"])
def test_every_in_context_row_numbers_its_boundaries(name):
    """Issue 14: hope's `every 8` row (32 boundaries in 256 tokens) had no numbers."""
    checked = nestdsl.load(name)
    fig = timeline_figure(checked)
    ax = fig.axes[0]
    levels = sorted(checked.spec.levels.values(), key=lambda lv: slowness(lv.every))
    for row, level in enumerate(levels):
        if not isinstance(level.every, int):
            continue
        numbers = sorted(int(t.get_text()) for t in ax.texts
                         if t.get_text().isdigit() and abs(t.get_position()[1] - (row - 0.36)) < 1e-9)  # fmt: skip
        assert 2 <= len(numbers) <= MAX_LABELS, (level, numbers)
        assert all(n % level.every == 0 for n in numbers)  # on this row's own boundaries
        assert numbers[-1] > default_window(checked) - level.every * (MAX_LABELS + 1)


def test_labelled_boundaries_thin_out_evenly():
    assert labelled_boundaries(list(range(8, 257, 8))) == list(range(16, 257, 16))
    assert labelled_boundaries([64, 128]) == [64, 128]
    assert len(labelled_boundaries(list(range(1, 1001)))) <= MAX_LABELS
