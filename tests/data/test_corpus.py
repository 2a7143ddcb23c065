"""Loading corpora and splitting them into training and validation text."""

from __future__ import annotations

import gzip

import pytest

from nestdsl.data import DEFAULT_CORPUS, corpus_fingerprint, load_corpus, split_corpus
from nestdsl.errors import UserError


def test_default_corpus_is_shakespeare():
    assert DEFAULT_CORPUS.stat().st_size < 3_000_000  # shipped gzipped in the package
    text = load_corpus()
    assert len(text) > 4_000_000
    assert b"Shakespeare" in text[:200] and b"ROMEO" in text


def test_plain_and_gzipped_files(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello world")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"hello world"))
    assert (
        load_corpus(tmp_path / "a.txt") == load_corpus(str(tmp_path / "a.txt.gz")) == b"hello world"
    )


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"not gzip at all"), "is not valid gzip"),
        (lambda p: p.write_bytes(gzip.compress(b"")), "is empty"),
    ],
    ids=["missing", "empty", "directory", "bad-gzip", "empty-gzip"],
)
def test_bad_files_give_one_line_user_errors(tmp_path, setup, message):
    path = tmp_path / "corpus.gz"
    setup(path)
    with pytest.raises(UserError, match=message) as caught:
        load_corpus(path)
    assert "\n" not in str(caught.value)


def test_split_is_a_deterministic_tail():
    data = bytes(range(256)) * 40
    split = split_corpus(data)
    assert split.train + split.validation == data
    assert len(split.validation) == int(len(data) * 0.05)
    assert split_corpus(data) == split
    assert split.part("train") is split.train and split.part("val") is split.validation


def test_split_edge_cases():
    tiny = split_corpus(b"ab")
    assert (tiny.train, tiny.validation) == (b"a", b"b")
    with pytest.raises(UserError, match="at least 2"):
        split_corpus(b"a")
    with pytest.raises(UserError, match="between 0 and 1"):
        split_corpus(b"abc", val_fraction=1.5)


def test_fingerprint_tells_corpora_apart():
    assert corpus_fingerprint(b"abc") == corpus_fingerprint(b"abc") != corpus_fingerprint(b"abd")
