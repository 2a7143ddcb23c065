"""Bits per byte of a model that reads BPE tokens: nats over the bytes the predicted tokens
stand for, checked against a value computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from nestdsl.data.tokenizer import train_tokenizer
from nestdsl.eval.bpb import bits_per_byte_of, heldout_windows


@pytest.fixture(scope="module")
def ab():
    """A BPE with one merge: "ab" (the only pair of its training text) is token 256's bytes."""
    tokenizer = train_tokenizer("bpe:257", b"ab" * 50)
    merged = next(i for i in range(257) if tokenizer.decode([i]) == b"ab")
    return tokenizer, merged


class HalfOn(torch.nn.Module):
    """Input-independent logits: probability 1/2 on one token, the rest spread evenly."""

    def __init__(self, token: int, vocab: int) -> None:
        super().__init__()
        self.token, self.vocab = token, vocab

    def forward(self, tokens, state=None):
        logits = torch.full((self.vocab,), math.log(0.5 / (self.vocab - 1)))
        logits[self.token] = math.log(0.5)
        return logits.expand(*tokens.shape, self.vocab), {}


def test_bits_per_byte_of_a_bpe_model_by_hand(ab):
    tokenizer, merged = ab
    windows = heldout_windows(b"ab" * 4 + b"a", seq_len=2, max_bytes=100, tokenizer=tokenizer)
    assert [tokenizer.decode(row) for row in windows.tolist()] == [b"ababab", b"ababa"]
    # Predicted: ab, ab, ab (1 bit each: p = 1/2) and a (p = 1/2 / 256: 9 bits), 7 bytes in all.
    bpb, covered = bits_per_byte_of(HalfOn(merged, 257), windows, 1, "cpu",
                                    token_bytes=tokenizer.token_bytes)  # fmt: skip
    assert covered == 7
    assert bpb == pytest.approx((3 * 1 + 9) / 7, rel=1e-6)
    # Read per token, the same nats would claim 12 / 4 = 3 bits: a BPE's loss per token is not
    # comparable with a byte model's; per byte it is.
    per_token, count = bits_per_byte_of(HalfOn(merged, 257), windows, 1, "cpu")
    assert count == 4 and per_token == pytest.approx(3.0, rel=1e-6)


def test_max_bytes_bounds_the_bytes_scored(ab):
    tokenizer, merged = ab
    text = b"ab" * 100
    for max_bytes in (10, 11, 57):
        windows = heldout_windows(text, 3, max_bytes, tokenizer)
        scored = int(tokenizer.token_bytes[windows[:, 1:]].sum())
        assert 0 < scored <= max_bytes
