"""Grid parsing and the resizing of specs for from-scratch tasks."""

from __future__ import annotations

import pytest

import nestdsl
from nestdsl.errors import UserError
from nestdsl.eval.grid import parse_grid, point_label
from nestdsl.eval.subject import Resize, load_resized, resize_overrides

KEYS = {"L": 64, "N": 8, "d_model": 64}


def test_default_grid_is_one_point():
    assert parse_grid([], KEYS) == [KEYS]


def test_grid_is_the_product_in_written_order():
    points = parse_grid(["L=64/128,N=4/8"], KEYS)
    assert [(p["L"], p["N"]) for p in points] == [(64, 4), (64, 8), (128, 4), (128, 8)]
    assert all(p["d_model"] == 64 for p in points)
    assert point_label(points[0]) == "L=64,N=4,d_model=64"


def test_several_grid_flags_add_points():
    assert len(parse_grid(["L=64", "L=128,d_model=32/64"], KEYS)) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("L=64,M=3", "unknown; known: L, N, d_model"),
        ("L", "not KEY=VALUE"),
        ("L=6x", "integers joined by '/'"),
        ("L=0", "positive"),
        ("L=64,L=128", "given twice"),
    ],
)
def test_bad_grids_are_refused(text, message):
    with pytest.raises(UserError, match=message):
        parse_grid([text], KEYS)


def test_resize_keeps_the_feed_forward_ratio_and_head_size():
    dims = {"vocab": 256, "d_model": 128, "n_heads": 4, "d_head": 32, "d_ff": 352, "n_layers": 2}
    got = resize_overrides(dims, Resize(d_model=64, heads=2, layers=3, vocab=512))
    assert got == [
        "dims.d_model=64", "dims.d_ff=176", "dims.n_heads=2", "dims.d_head=32",
        "dims.n_layers=3", "dims.vocab=512",
    ]  # fmt: skip
    assert resize_overrides(dims, Resize()) == []


def test_resize_refuses_uneven_heads():
    dims = {"d_model": 128, "n_heads": 4, "d_head": 32}
    with pytest.raises(UserError, match="not divisible"):
        resize_overrides(dims, Resize(d_model=64, heads=3))


def test_resized_spec_has_the_new_sizes():
    checked = load_resized("gated-deltanet", Resize(64, 2, 1, 256), ["dims.d_ff=100"])
    dims = checked.spec.dims
    assert (dims["d_model"], dims["n_heads"], dims["d_head"], dims["n_layers"]) == (64, 2, 32, 1)
    assert dims["d_ff"] == 100  # the user's own --set comes last and wins
    assert nestdsl.load("gated-deltanet").spec.dims["d_model"] == 128  # the file is untouched
