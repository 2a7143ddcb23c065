"""The `needle` task: the haystack generator on hand-built cases, the metric, the command."""

from __future__ import annotations

import json
import re

import pytest
import torch

from nestdsl.cli import main
from nestdsl.data.corpus import split_corpus
from nestdsl.errors import UserError
from nestdsl.eval.haystack import (
    KINDS,
    SNAP,
    answer_scores,
    insertion_point,
    make_needle,
    needle_batch,
    needle_row,
    row_tensors,
)
from nestdsl.eval.mqar import IGNORE
from nestdsl.eval.needle import NeedleSettings, by_length

# Words of five bytes with a space after each: word starts are exactly the multiples of 5.
WORDS = b"abcd " * 2000
# Every line is distinct, so a 20-byte slice of one part cannot occur in the other.
LINES = b"".join(f"line {i:05d} of the text.\n".encode() for i in range(4000))


def test_insertion_point_moves_back_to_a_word_start():
    haystack = b"ab cd ef"  # a0 b1 _2 c3 d4 _5 e6 f7
    assert insertion_point(haystack, 0.0) == 0
    assert insertion_point(haystack, 0.5) == 3  # round(4.0) = 4 is inside `cd`: back to `c`
    assert insertion_point(haystack, 1.0) == 6  # 8 is inside `ef`: back to `e`
    assert insertion_point(b"x" * 100, 0.5) == 50  # no word start within SNAP: cut as asked


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_sits_at_the_asked_depth(kind, depth):
    row = needle_row(WORDS, 256, depth, kind, seed=7)
    asked = round(depth * row.haystack)
    assert 0 <= asked - row.start < 5 <= SNAP  # the word start at or before the asked byte
    assert row.start == 0 or row.text[row.start - 1 : row.start] == b" "
    assert row.text[row.start :].startswith(row.needle.sentence)


@pytest.mark.parametrize("kind", KINDS)
def test_row_is_haystack_needle_query_answer(kind):
    row = needle_row(LINES, 300, 0.4, kind, seed=3)
    hay = LINES[row.offset : row.offset + row.haystack]
    n = row.needle
    assert row.text == hay[: row.start] + n.sentence + hay[row.start :] + n.query + n.answer
    assert len(row.text) == 301  # L + 1: inputs are the first L bytes, targets the last L


@pytest.mark.parametrize("kind", KINDS)
def test_labels_lie_on_the_answer_only(kind):
    L = 200
    row = needle_row(LINES, L, 0.5, kind, seed=11)
    inputs, labels = row_tensors([row])
    assert inputs.shape == labels.shape == (1, L)
    assert bytes(inputs[0].tolist()) == row.text[:L]
    scored = (labels[0] != IGNORE).nonzero().flatten().tolist()
    a = len(row.needle.answer)
    assert scored == list(range(L - a, L))  # the query's last byte predicts the first answer byte
    assert bytes(labels[0, L - a :].tolist()) == row.needle.answer


@pytest.mark.parametrize("length", [128, 256, 777])
def test_batches_have_exact_lengths_and_repeat_by_seed(length):
    inputs, labels = needle_batch(LINES, length, 6, seed=5)
    assert inputs.shape == labels.shape == (6, length)
    again, _ = needle_batch(LINES, length, 6, seed=5)
    other, _ = needle_batch(LINES, length, 6, seed=6)
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)
    # Kinds in turn: answers of 5, 7 and 36 bytes.
    assert (labels != IGNORE).sum(dim=1).tolist() == [5, 7, 36, 5, 7, 36]


def test_needle_kinds_are_distinct():
    import random

    uuid = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    for seed in range(50):
        p, n, u = (make_needle(kind, random.Random(seed)) for kind in KINDS)
        assert re.fullmatch(rb"[1-9][0-9]{4}", p.answer) and b"pass key" in p.sentence
        assert re.fullmatch(rb"[1-9][0-9]{6}", n.answer) and b"magic number" in n.sentence
        assert uuid.fullmatch(u.answer) and b"uuid" in u.sentence
        for needle in (p, n, u):
            assert needle.answer in needle.sentence and needle.answer not in needle.query
            # The query repeats the sentence up to its value: what the model must match.
            assert needle.sentence.startswith(needle.query.lstrip(b"\n"))
    values = {make_needle("passkey", random.Random(s)).answer for s in range(50)}
    assert len(values) > 40  # values vary with the seed


def test_validation_haystack_is_disjoint_from_training():
    split = split_corpus(LINES)
    for seed in range(20):
        row = needle_row(split.validation, 128, 0.5, "passkey", seed)
        hay = split.validation[row.offset : row.offset + row.haystack]
        assert row.text.startswith(hay[: row.start]) and len(hay) >= 20
        assert hay not in split.train


def test_answer_scores_by_hand():
    labels = torch.full((2, 6), IGNORE)
    labels[0, 3:] = torch.tensor([1, 2, 3])
    labels[1, 3:] = torch.tensor([1, 2, 3])
    predicted = torch.tensor([[0, 0, 0, 1, 2, 3], [9, 9, 9, 1, 0, 3]])  # row 1: one byte wrong
    logits = torch.nn.functional.one_hot(predicted, 10).float()  # [2, 6, 10]
    whole, fraction = answer_scores(logits, labels)
    assert whole.tolist() == [1.0, 0.0]
    assert fraction.tolist() == pytest.approx([1.0, 2 / 3])


def test_accuracy_by_length_averages_kinds_and_depths():
    cells = [
        {"multiple": 1, "accuracy": 1.0, "byte_accuracy": 1.0},
        {"multiple": 1, "accuracy": 0.5, "byte_accuracy": 0.75},
        {"multiple": 2, "accuracy": 0.0, "byte_accuracy": 0.2},
    ]
    assert by_length(cells, (1, 2)) == {"1x": 0.75, "2x": 0.0}
    assert by_length(cells, (1, 2), "byte_accuracy") == {"1x": 0.875, "2x": 0.2}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (NeedleSettings(train_length=100, kinds=KINDS), "cannot hold a needle .* at least 120"),
        (NeedleSettings(train_length=70), "kind passkey, number .* at least 78"),
        (NeedleSettings(kinds=("poem",)), "unknown needle kinds \\['poem'\\]"),
        (NeedleSettings(depths=(0.5, 1.5)), "depths must lie in \\[0, 1\\]"),
        (NeedleSettings(lengths=(0,)), "length multiples must be positive"),
    ],
    ids=["too-short-uuid", "too-short", "kind", "depth", "multiple"],
)
def test_settings_mistakes(settings, message):
    with pytest.raises(UserError, match=message):
        settings.check()


def test_needle_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "transformer", "--task", "needle", "--train-length", "120", "--lengths", "1,2",
            "--depths", "0,1", "--kinds", "passkey,uuid", "--steps", "2", "--batch-size", "2",
            "--eval-rows", "2", "--d-model", "16", "--layers", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "runs/eval/transformer-needle.json").read_text())
    cells = {(c["kind"], c["depth"], c["length"]) for c in result["cells"]}
    assert cells == {(k, d, n) for k in ("passkey", "uuid") for d in (0, 1) for n in (120, 240)}
    assert all(0 <= c["accuracy"] <= c["byte_accuracy"] <= 1 for c in result["cells"])
    assert (
        set(result["accuracy_by_length"]) == set(result["byte_accuracy_by_length"]) == {"1x", "2x"}
    )
    assert result["settings"]["steps"] == 2 and result["training"]["parameters"] > 0
    png = tmp_path / "runs/eval/transformer-needle.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "needle accuracy" in capsys.readouterr().out


def test_needle_refuses_a_bad_flag(capsys):
    assert main(["eval", "transformer", "--task", "needle", "--depths", "0,x"]) == 1
    assert "--depths takes values joined by commas" in capsys.readouterr().err
