"""A comparison's columns: mean, sample spread over seeds, and the winner (compare/summary.py)."""

from __future__ import annotations

import math

import pytest

from nestdsl.compare.report import table
from nestdsl.compare.summary import Column, task_metrics


def test_mean_and_sample_spread():
    column = Column("bpb", "lower", {"a": [1.0, 3.0], "b": [4.0]})
    assert column.mean("a") == 2.0 and column.spread("a") == pytest.approx(math.sqrt(2))
    assert column.spread("b") == 0.0  # one seed: no spread
    assert column.mean("missing") is None


def test_the_winner_follows_the_direction_and_says_when_seeds_cannot_tell():
    lower = Column("bpb", "lower", {"a": [1.0, 3.0], "b": [4.0, 4.0]})
    assert lower.winner() == ("a", False)  # 2 vs 4: further apart than sqrt(2) + 0
    higher = Column("acc", "higher", {"a": [1.0, 3.0], "b": [3.0, 3.0]})
    assert higher.winner() == ("b", True)  # 3 vs 2: within sqrt(2)
    assert Column("parameters", None, {"a": [5]}).winner() == (None, False)


def test_values_that_are_not_finite_are_left_out():
    column = Column("bpb", "lower", {"a": [float("nan"), 2.0], "b": [None, None]})
    assert column.mean("a") == 2.0 and column.mean("b") is None
    assert column.winner() == ("a", False)


def test_table_bolds_the_winner_and_names_it():
    columns = [Column("bpb", "lower", {"x": [2.0, 2.2], "y": [3.0, 3.2]})]
    lines = table(columns, ["x", "y"], seeds=2)
    assert lines[0] == "| spec | bpb ↓ |"
    assert lines[2] == "| `x` | **2.1000 ± 0.1414** |"
    assert lines[3] == "| `y` | 3.1000 ± 0.1414 |"
    assert lines[4] == "| best | `x` |"


def test_task_metrics():
    assert task_metrics("bpb", {"bpb": 2.5}) == {"bpb": (2.5, "lower")}
    recall = {"points": [{"L": 64, "N": 8, "d_model": 64, "accuracy": 0.5}]}
    assert task_metrics("recall", recall) == {"recall L=64,N=8,d=64": (0.5, "higher")}
