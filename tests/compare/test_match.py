"""`match_params`: resizing a spec's width to a target parameter count (nestdsl/compare/match.py)."""

from __future__ import annotations

import pytest

from nestdsl.compare.match import count_params, match_params
from nestdsl.errors import UserError

TRANSFORMER = 467_584  # the shipped transformer's parameters (d_model 128, 2 layers)


def test_count_is_the_compiled_modules_own():
    import torch

    import nestdsl

    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load("deltanet", overrides=["dims.d_model=64"]))
    assert count_params("deltanet", ["dims.d_model=64"]) == sum(
        p.numel() for p in model.parameters()
    )


@pytest.mark.parametrize("spec", ["gated-deltanet", "titans-lmm", "hope"])
def test_shipped_specs_match_the_transformer_within_five_percent(spec):
    overrides = match_params(spec, TRANSFORMER)
    got = count_params(spec, overrides)
    assert abs(got - TRANSFORMER) <= 0.05 * TRANSFORMER
    assert overrides[0].startswith("dims.d_model=")
    width = int(overrides[0].split("=")[1])
    assert width < 128  # each of these is larger than the transformer at d_model 128
    # d_head follows the width and the head count (4 heads in every shipped spec)
    assert f"dims.d_head={width // 4}" in overrides
    assert width % 4 == 0


def test_the_tolerance_decides():
    # hope's widths step by its 4 heads: d_model 96 is 1.9% below the target, 100 is above
    overrides = match_params("hope", TRANSFORMER, tolerance=0.02)
    assert abs(count_params("hope", overrides) - TRANSFORMER) <= 0.02 * TRANSFORMER
    with pytest.raises(UserError, match=r"within 1%; the closest is d_model 96"):
        match_params("hope", TRANSFORMER, tolerance=0.01)


def test_a_spec_already_at_the_target_is_left_alone():
    assert match_params("transformer", TRANSFORMER) == []


def test_growing_keeps_the_ffn_ratio():
    overrides = match_params("transformer", 4 * TRANSFORMER)
    width = int(overrides[0].split("=")[1])
    assert width > 128
    ff = next(o for o in overrides if o.startswith("dims.d_ff="))
    assert int(ff.split("=")[1]) == round(352 / 128 * width)


def test_the_users_own_overrides_come_first():
    # rotary embeddings need an even d_head, so the transformer's widths step by 8: at twice
    # its depth the closest is 7% off
    overrides = match_params("transformer", TRANSFORMER, 0.1, overrides=["dims.n_layers=4"])
    got = count_params("transformer", ["dims.n_layers=4", *overrides])
    assert abs(got - TRANSFORMER) <= 0.1 * TRANSFORMER
    assert int(overrides[0].split("=")[1]) < 128  # twice the depth, so narrower


def test_an_unreachable_target_says_the_closest():
    with pytest.raises(UserError, match=r"closest is d_model \d+ with [\d,]+ \(") as info:
        match_params("transformer", 100)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("target", "tolerance"), [(0, 0.05), (1000, 1.5)])
def test_bad_arguments_are_user_errors(target, tolerance):
    with pytest.raises(UserError):
        match_params("transformer", target, tolerance)
