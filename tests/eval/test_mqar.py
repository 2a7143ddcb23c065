"""MQAR generator semantics (Zoology's multiquery_ar) on small hand-checkable rows."""

from __future__ import annotations

import math

import pytest
import torch

from nestdsl.errors import UserError
from nestdsl.eval.mqar import (
    IGNORE,
    MQARShape,
    gap_probabilities,
    mqar_rows,
    query_distances,
    row_accuracy,
)


def test_pairs_keys_values_and_labels_follow_zoology():
    shape = MQARShape(seq_len=32, pairs=4, vocab=64)
    inputs, labels = mqar_rows(shape, rows=50, seed=3)
    assert inputs.shape == labels.shape == (50, 32)
    for row in range(50):
        x, y = inputs[row].tolist(), labels[row].tolist()
        keys, values = x[0:8:2], x[1:8:2]
        assert len(set(keys)) == 4 and all(1 <= k < 32 for k in keys)  # lower half, never 0
        assert len(set(values)) == 4 and all(32 <= v < 64 for v in values)  # upper half
        assert all(t == IGNORE for t in y[:8])  # no label inside the context
        asked = [i for i, t in enumerate(y) if t != IGNORE]
        assert len(asked) == 4  # every key queried exactly once
        assert all(i >= 8 and (i - 8) % 2 == 0 for i in asked)  # query slots 2N + 2g
        pairs = dict(zip(keys, values))
        assert sorted(x[i] for i in asked) == sorted(keys)
        assert all(y[i] == pairs[x[i]] for i in asked)  # the label is the key's value


def test_full_query_zone_uses_every_slot():
    # L = 4N: the query zone has exactly N slots, so the positions are fixed.
    inputs, labels = mqar_rows(MQARShape(seq_len=16, pairs=4, vocab=32), rows=5, seed=0)
    asked = (labels != IGNORE).nonzero()[:, 1].view(5, 4)
    assert asked.tolist() == [[8, 10, 12, 14]] * 5


def test_query_distances_by_hand():
    # N = 2 pairs (3 -> 40) (5 -> 41); queries: key 5 at position 6 (distance 4), key 3 at 10
    inputs = torch.tensor([[3, 40, 5, 41, 9, 9, 5, 9, 9, 9, 3, 9]])
    labels = torch.full_like(inputs, IGNORE)
    labels[0, 6], labels[0, 10] = 41, 40
    assert query_distances(inputs, labels, pairs=2).tolist() == [[0] * 6 + [4, 0, 0, 0, 10, 0]]


def test_query_distances_point_back_at_the_key():
    inputs, labels = mqar_rows(MQARShape(seq_len=64, pairs=8, vocab=256), rows=20, seed=5)
    d = query_distances(inputs, labels, pairs=8)
    rows, q = (labels != IGNORE).nonzero(as_tuple=True)
    assert torch.equal(inputs[rows, q - d[rows, q]], inputs[rows, q])  # the key itself
    assert torch.equal(inputs[rows, q - d[rows, q] + 1], labels[rows, q])  # then its value
    assert (d[labels == IGNORE] == 0).all() and (d[rows, q] >= 2).all()


def test_rows_are_a_function_of_the_seed():
    shape = MQARShape(seq_len=64, pairs=8, vocab=256)
    a, b, c = (mqar_rows(shape, 8, seed=s) for s in (1, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_gap_probabilities_by_hand():
    p = gap_probabilities(3, power_a=0.5)
    raw = [0.5 * 1**-0.5, 0.5 * 2**-0.5, 0.5 * 3**-0.5]
    assert p.tolist() == pytest.approx([r / sum(raw) for r in raw])
    assert math.isclose(p.sum().item(), 1.0)


def test_short_gaps_are_more_likely():
    inputs, labels = mqar_rows(MQARShape(seq_len=256, pairs=4, vocab=512), rows=400, seed=0)
    slots = ((labels != IGNORE).nonzero()[:, 1] - 8) // 2
    assert (slots < 31).float().mean() > (slots >= 93).float().mean()


def test_row_accuracy_by_hand():
    labels = torch.full((2, 4), IGNORE)
    labels[0, 1], labels[0, 3] = 5, 6  # row 0 asks two queries
    labels[1, 2] = 7  # row 1 asks one
    logits = torch.zeros(2, 4, 8)
    logits[0, 1, 5] = 1.0  # right
    logits[0, 3, 2] = 1.0  # wrong
    logits[1, 2, 7] = 1.0  # right
    logits[1, 0, 3] = 9.0  # off-query positions never count
    assert row_accuracy(logits, labels).tolist() == [0.5, 1.0]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (MQARShape(63, 8, 256), "even sequence length"),
        (MQARShape(16, 8, 256), "L >= 4N"),
        (MQARShape(64, 8, 64), "larger than L"),
    ],
    ids=["odd-L", "too-many-pairs", "small-vocab"],
)
def test_bad_shapes_are_refused(shape, message):
    with pytest.raises(UserError, match=message):
        shape.check()
