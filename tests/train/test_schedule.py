"""Warmup then cosine: the values at the edges of each phase."""

from __future__ import annotations

import math

import pytest

from nestdsl.train.schedule import WarmupCosine, default_warmup


def test_warmup_is_linear_and_reaches_the_peak():
    schedule = WarmupCosine(base_lr=1.0, warmup_steps=10, total_steps=100, min_ratio=0.1)
    assert schedule.lr_at(0) == pytest.approx(0.1)
    assert schedule.lr_at(4) == pytest.approx(0.5)
    assert schedule.lr_at(9) == pytest.approx(1.0)
    assert schedule.lr_at(10) == pytest.approx(1.0)  # the decay starts from the peak


def test_cosine_decays_to_the_floor():
    schedule = WarmupCosine(base_lr=2.0, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert schedule.lr_at(60) == pytest.approx(0.2 + 1.8 * 0.5)  # half way: mean of peak and floor
    assert schedule.lr_at(110) == pytest.approx(0.2)
    assert schedule.lr_at(500) == pytest.approx(0.2)  # past the end it stays at the floor
    assert schedule.lr_at(109) > schedule.lr_at(110)
    values = [schedule.lr_at(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_no_warmup_and_all_warmup():
    assert WarmupCosine(1.0, 0, 10, 0.0).lr_at(0) == pytest.approx(1.0)
    assert WarmupCosine(1.0, 0, 10, 0.0).lr_at(5) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 2))
    )
    assert WarmupCosine(1.0, 10, 10).lr_at(9) == pytest.approx(1.0)


def test_default_warmup_and_validation():
    assert default_warmup(300) == 30
    assert default_warmup(5000) == 100
    with pytest.raises(ValueError):
        WarmupCosine(1.0, 20, 10)
