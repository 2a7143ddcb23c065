"""Tokenizers: bytes is the identity; a trained BPE round-trips any bytes, is deterministic
(the same tokenizer.json from the same text, in another process too), has exactly N ids and
says how many bytes each id stands for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tokenizers import pre_tokenizers

from nestdsl.data import load_corpus
from nestdsl.data.tokenizer import (
    ByteTokenizer,
    byte_alphabet,
    check_name,
    tokenizer_from_json,
    train_tokenizer,
)
from nestdsl.errors import UserError

# Real text with what a tokenizer must survive: runs of blank lines, trailing spaces before a
# newline, indentation, accents, a three-byte and a four-byte character, and bytes that are not
# UTF-8 at all (a lone continuation byte, a truncated sequence at the very end).
ODD = "café \n\n  naïve\t€ 😀\n \nEND".encode() + b"\x80ok\xff\xfe\n\xe2\x82"


@pytest.fixture(scope="module")
def text() -> bytes:
    return load_corpus()[:40_000]


@pytest.fixture(scope="module")
def bpe(text):
    return train_tokenizer("bpe:300", text)


def test_bytes_is_the_identity():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(ODD)
    assert ids.tolist() == list(ODD) and tokenizer.decode(ids.tolist()) == ODD
    assert tokenizer.vocab_size == 256 and torch.equal(tokenizer.token_bytes, torch.ones(256).long())
    assert tokenizer.to_json() is None and tokenizer.sha256 is None


def test_the_byte_alphabet_is_the_libraries():
    table = byte_alphabet()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"  # GPT-2's "Ġ"


def test_bpe_round_trips_real_and_broken_text(bpe, text):
    for data in (text, ODD, b"", b"\n", load_corpus()[-5_000:]):  # the last: text it never saw
        ids = bpe.encode(data)
        assert bpe.decode(ids.tolist()) == data
        assert int(bpe.token_bytes[ids.long()].sum()) == len(data)  # bytes per id add up
    assert len(bpe.encode(text)) < 0.8 * len(text)  # 44 merges already shorten English text


def test_bpe_has_exactly_n_ids_and_their_bytes(bpe):
    assert bpe.vocab_size == 300 and bpe.token_bytes.shape == (300,)
    assert int((bpe.token_bytes == 1).sum()) == 256  # every byte has its own id
    assert int((bpe.token_bytes >= 2).sum()) == 44  # each merge joins two or more bytes
    for index in range(300):
        assert len(bpe.decode([index])) == int(bpe.token_bytes[index])


def test_pieces_encode_like_the_whole_text(bpe, text):
    """encode() cuts the text before newlines to batch it; the ids are those of one call."""
    sample = text + ODD[:-9]  # the library reads valid UTF-8 only
    whole = bpe.model.encode(sample.decode(), add_special_tokens=False).ids
    assert bpe.encode(sample).tolist() == whole


def test_training_is_deterministic_across_processes(bpe, text, tmp_path):
    assert train_tokenizer("bpe:300", text).to_json() == bpe.to_json()
    corpus = tmp_path / "text.bin"
    corpus.write_bytes(text)
    script = (
        "import sys; from pathlib import Path; from nestdsl.data.tokenizer import train_tokenizer; "
        "print(train_tokenizer('bpe:300', Path(sys.argv[1]).read_bytes()).sha256)"
    )
    other = subprocess.run([sys.executable, "-c", script, str(corpus)], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})  # fmt: skip
    assert other.stdout.strip() == bpe.sha256


def test_saved_json_loads_to_the_same_tokenizer(bpe, text):
    loaded = tokenizer_from_json("bpe:300", bpe.to_json())
    assert torch.equal(loaded.encode(text), bpe.encode(text)) and loaded.sha256 == bpe.sha256
    with pytest.raises(UserError, match="not a valid tokenizer"):
        tokenizer_from_json("bpe:300", "{not json")
    with pytest.raises(UserError, match="no tokenizer.json"):
        tokenizer_from_json("bpe:300", None)


@pytest.mark.parametrize("name", ["bpe:256", "bpe:12", "bpe:", "bpe", "BPE:300", "wordpiece"])
def test_bad_names_are_refused(name):
    with pytest.raises(UserError, match="--tokenizer"):
        check_name(name)


def test_names():
    assert check_name("bytes") == ("bytes", 256) and check_name("bpe:4096") == ("bpe", 4096)


def test_too_little_text_for_the_vocabulary_says_so():
    with pytest.raises(UserError, match=r"only \d+ distinct tokens, not 1000; ask for bpe:\d+"):
        train_tokenizer("bpe:1000", b"to be or not to be")
