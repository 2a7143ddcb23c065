"""The bpb task: held-out windows, the metric against hand-computed values, spec and run subjects."""

from __future__ import annotations

import math

import pytest
import torch

from nestdsl.errors import UserError
from nestdsl.eval.bpb import bits_per_byte_of, heldout_windows, run_bpb


def test_windows_share_borders_and_drop_the_short_tail():
    windows = heldout_windows(bytes(range(11)), seq_len=3, max_bytes=100)
    assert windows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]  # byte 10 has no room
    assert heldout_windows(bytes(range(11)), seq_len=3, max_bytes=6).shape == (2, 4)
    with pytest.raises(UserError, match="fewer than seq_len"):
        heldout_windows(b"abc", seq_len=8, max_bytes=100)


class Fixed(torch.nn.Module):
    """Logits that do not depend on the input: log-probability 1/2 on byte 'a', rest uniform."""

    vocab = 256

    def forward(self, tokens, state=None):
        logits = torch.full((256,), math.log(0.5 / 255))
        logits[ord("a")] = math.log(0.5)
        return logits.expand(*tokens.shape, 256), {}


def test_uniform_guess_is_eight_bits():
    class Uniform(Fixed):
        def forward(self, tokens, state=None):
            return torch.zeros(*tokens.shape, 256), {}

    bpb, count = bits_per_byte_of(Uniform(), heldout_windows(b"hello world!", 4, 100), 2, "cpu")
    assert count == 8 and bpb == pytest.approx(8.0)


def test_bits_per_byte_by_hand():
    text = b"aaxa" + b"a" * 5  # predicted: a x a a a a a a  (7 'a', 1 'x')
    bpb, count = bits_per_byte_of(Fixed(), heldout_windows(text, 4, 100), 1, "cpu")
    expected = (7 * 1.0 + 1 * -math.log2(0.5 / 255)) / 8
    assert count == 8 and bpb == pytest.approx(expected, rel=1e-6)


def test_untrained_spec_on_a_data_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    small = ["dims.d_model=16", "dims.n_heads=2", "dims.d_head=8", "dims.n_layers=1"]
    result = run_bpb("transformer", str(corpus), seq_len=16, max_bytes=400, overrides=small,
                     progress=False)  # fmt: skip
    assert result["task"] == "bpb" and result["trained_steps"] == 0
    assert result["bytes"] == 400  # the held-out tail is 450 bytes; 400 are scored
    assert 6.0 < result["bpb"] < 10.0  # an untrained byte model is near the uniform 8 bits
