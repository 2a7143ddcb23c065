"""The four embedded corpora: each loads by name, is the text it claims, and names resolve."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from nestdsl.data.corpus import (
    DEFAULT_CORPUS,
    EMBEDDED,
    corpus_argument,
    corpus_label,
    load_corpus,
    resolve_corpus,
    split_corpus,
)
from nestdsl.errors import UserError

# name -> (raw size in bytes, a phrase near the start, a phrase anywhere): CORPORA.md's table.
EXPECTED = {
    "shakespeare": (5_057_198, b"Shakespeare", b"ROMEO"),
    "kjv": (4_298_239, b"In the beginning God created", b"Revelation"),
    "milton": (1_068_005, b"AREOPAGITICA", b"Paradise Lost"),
    "jargon": (1_681_817, b"The Jargon File", b"hacker"),
}


def test_the_four_names_in_domain_order():
    assert list(EMBEDDED) == ["shakespeare", "kjv", "milton", "jargon"]
    assert EMBEDDED["shakespeare"] == DEFAULT_CORPUS


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_embedded_corpus_loads_by_name(name):
    size, start, anywhere = EXPECTED[name]
    path = EMBEDDED[name]
    assert path.is_file() and path.stat().st_size < size / 2  # shipped gzipped
    text = load_corpus(name)
    assert len(text) == size
    assert start in text[:400] and anywhere in text
    text.decode("utf-8")  # valid UTF-8 throughout
    assert b"\r\n" not in text
    split = split_corpus(text)
    assert len(split.validation) == int(size * 0.05)


def test_the_corpora_are_distinct_texts():
    heads = {name: load_corpus(name)[:4096] for name in EMBEDDED}
    assert len(set(heads.values())) == len(EMBEDDED)


def test_none_is_shakespeare():
    assert resolve_corpus(None) == (DEFAULT_CORPUS, "shakespeare")
    assert load_corpus(None) == load_corpus("shakespeare")


def test_an_existing_file_wins_over_an_embedded_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("kjv").write_bytes(b"my own kjv")
    assert resolve_corpus("kjv") == (Path("kjv"), "kjv")
    assert load_corpus("kjv") == b"my own kjv"
    assert corpus_label("kjv") == "kjv"
    Path("milton").mkdir()  # a folder of that name is a user's path too, and refused as such
    with pytest.raises(UserError, match="is a directory"):
        load_corpus("milton")


def test_an_unknown_name_lists_the_embedded_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        load_corpus("kvj")
    message = str(caught.value)
    assert "kvj does not exist" in message
    assert "embedded: shakespeare, kjv, milton, jargon" in message
    assert "\n" not in message


def test_a_path_object_is_never_an_embedded_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(Path("kjv"))


def test_labels(tmp_path):
    assert corpus_label(None) == "shakespeare"
    assert corpus_label("jargon") == "jargon"
    path = tmp_path / "notes.txt.gz"
    path.write_bytes(gzip.compress(b"x"))
    assert corpus_label(str(path)) == "notes"


def test_a_run_records_an_embedded_name_as_a_name_and_a_file_as_an_absolute_path(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert corpus_argument("jargon") == "jargon"
    Path("notes.txt").write_bytes(b"abc")
    assert corpus_argument("notes.txt") == str(tmp_path / "notes.txt")
    Path("jargon").write_bytes(b"mine")  # a file of that name wins here too
    assert corpus_argument("jargon") == str(tmp_path / "jargon")


def test_training_reads_an_embedded_corpus_by_name(tmp_path):
    from nestdsl.train.config import TrainConfig, spec_source
    from nestdsl.train.loop import train

    small = ["dims.d_model=16", "dims.n_heads=2", "dims.d_head=8", "dims.n_layers=1"]
    config = TrainConfig(steps=1, batch_size=2, seq_len=16, eval_every=1, eval_batches=1,
                         data="jargon", device="cpu")  # fmt: skip
    result = train(spec_source("transformer", small), config, tmp_path / "run", progress=False)
    assert result is not None
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert data["name"] == "jargon" and data["bytes"] == EXPECTED["jargon"][0]
