"""A data-flow cycle is one error, at the edge that closes it, with the fix for that edge
(issue 14, item 4): not one error per elementary cycle with a hint that fits only some."""

from __future__ import annotations

from pathlib import Path

import pytest

import nestdsl
from nestdsl.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
GATED = (ROOT / "specs" / "gated-deltanet.yaml").read_text()


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        nestdsl.check_text(text, "t.yaml")
    return [str(d) for d in caught.value.errors]


def line_of(text: str, start: str) -> int:
    return next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(start))


def test_a_loop_of_inputs_through_a_memory_is_one_error_at_its_closing_edge():
    # h reads y, computed from h through every input of M's write: five elementary cycles.
    text = GATED.replace("h:    {op: rmsnorm, in: x}", "h:    {op: rmsnorm, in: y}")
    (only,) = errors(text)
    assert only.startswith(f"t.yaml:{line_of(text, 'h:')}:7: error[flow-cycle]: data-flow cycle: h -> ")
    assert only.split(" (hint")[0].endswith("y -> h")
    assert "change the edge y -> h: `h` takes `y`, which is computed from `h`" in only
    assert "read_then_write" not in only  # the read order is not what closed this loop


def test_a_write_that_learns_from_the_read_points_at_the_read_order():
    text = GATED.replace("values: v\n", "values: vo\n").replace(
        "      y:    {op: linear, in: og, out: d_model}",
        "      y:    {op: linear, in: og, out: d_model}\n      vo:   {op: linear, in: o, out: [n_heads, d_head]}",
    )
    (only,) = errors(text)
    assert f"t.yaml:{line_of(text, 'o:')}:7: error[flow-cycle]" in only
    assert "change the edge vo -> o: `o` reads `M` after this token's write" in only
    assert "`order: read_then_write` or `chunk_start`" in only


def test_two_separate_loops_are_two_errors():
    text = GATED.replace("h:    {op: rmsnorm, in: x}", "h:    {op: rmsnorm, in: y}").replace(
        "h2:   {op: rmsnorm, in: x1}", "h2:   {op: rmsnorm, in: x2}"
    )
    found = errors(text)
    assert len(found) == 2
    assert [e.split("change the edge ")[1].split(":")[0] for e in found] == ["y -> h", "x2 -> h2"]
