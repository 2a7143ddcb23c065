"""The `in-context` task: buckets by hand, streaming in pieces equals feeding whole, the command."""

from __future__ import annotations

import json
import math

import pytest
import torch

import nestdsl
from nestdsl.cli import main
from nestdsl.errors import UserError
from nestdsl.eval.in_context import log_buckets, position_losses, stream_offsets, stream_tensor

TINY = ["dims.d_model=16", "dims.n_heads=2", "dims.d_head=8", "dims.n_layers=1"]
TEXT = b"to be or not to be, that is the question. " * 200


def test_buckets_of_a_hand_made_curve():
    curve = torch.arange(1, 7, dtype=torch.float64) * math.log(2)  # 1..6 bits at positions 0..5
    assert log_buckets(curve) == [
        {"from": 1, "to": 1, "positions": 1, "bpb": 1.0},
        {"from": 2, "to": 3, "positions": 2, "bpb": 2.5},
        {"from": 4, "to": 6, "positions": 3, "bpb": 5.0},
    ]
    # At T = 8 the lone position 8 joins [4, 7] rather than making a bucket of its own.
    curve = torch.arange(1, 9, dtype=torch.float64) * math.log(2)
    assert [(b["from"], b["to"], b["bpb"]) for b in log_buckets(curve)] == [
        (1, 1, 1.0), (2, 3, 2.5), (4, 8, 6.0),
    ]  # fmt: skip
    # At T = 5 the remainder [4, 5] is a full half of its octave: a bucket of its own.
    assert [b["to"] for b in log_buckets(torch.zeros(5, dtype=torch.float64))] == [1, 3, 5]


def test_stream_offsets_spread_over_the_text():
    assert stream_offsets(100, 9, 3) == [0, 45, 90]  # the last stream ends at the last byte
    assert stream_offsets(100, 9, 1) == [0]
    streams = stream_tensor(bytes(range(100)), [0, 45, 90], 9)
    assert streams.shape == (3, 10) and streams[2, -1].item() == 99
    with pytest.raises(UserError, match="fewer than --length \\+ 1 = 101"):
        stream_offsets(100, 100, 2)


class Uniform(torch.nn.Module):
    """A model that always guesses uniformly and records what each call was given."""

    vocab = 256

    def __init__(self):
        super().__init__()
        self.calls = []  # (bytes fed, the state it was handed)

    def forward(self, tokens, state=None):
        self.calls.append((tokens.shape[1], state))
        logits = torch.zeros(*tokens.shape, 256)  # [B, T, 256]
        return logits, {"call": len(self.calls)}


def test_uniform_guess_scores_eight_bits_and_carries_the_state():
    model = Uniform()
    streams = torch.randint(0, 256, (3, 101))
    curve = position_losses(model, streams, piece=30, device="cpu")
    assert curve.shape == (100,)
    assert torch.allclose(curve / math.log(2), torch.full((100,), 8.0, dtype=torch.float64))
    # Pieces of 30 bytes, the last one short; each call gets the state the one before returned.
    assert model.calls == [(30, None), (30, {"call": 1}), (30, {"call": 2}), (10, {"call": 3})]


@pytest.mark.parametrize("spec", ["transformer", "deltanet", "gated-deltanet", "titans-lmm"])
def test_pieces_equal_whole(spec):
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load(spec, overrides=TINY)).double()
    streams = torch.randint(0, 256, (2, 66))  # [S, T + 1], T = 65: pieces of 7 end mid-chunk
    whole = position_losses(model, streams, piece=65, device="cpu")
    pieces = position_losses(model, streams, piece=7, device="cpu")
    assert torch.allclose(pieces, whole, rtol=1e-9, atol=1e-9)


def test_in_context_of_a_spec_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(TEXT)
    out = tmp_path / "ic.json"
    argv = ["eval", "transformer", "--task", "in-context", "--data", str(corpus), "--length", "64",
            "--piece", "16", "--streams", "2", "--out", str(out), "--no-progress"]  # fmt: skip
    for override in TINY:
        argv += ["--set", override]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert [(b["from"], b["to"]) for b in result["buckets"]] == [
        (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 64),
    ]  # fmt: skip
    assert sum(b["positions"] for b in result["buckets"]) == 64
    assert result["bytes"] == 128 and result["trained_steps"] == 0
    assert result["trained_length"] is None  # an untrained spec has no training length
    assert 7.0 < result["bpb"] < 9.0  # an untrained byte model is close to the uniform 8
    offsets = result["settings"]["offsets"]
    assert offsets[0] == 0 and offsets[1] == int(len(TEXT) * 0.05) - 65
    assert open(result["plot"], "rb").read(4) == b"\x89PNG"
    assert "bits per byte over 2 streams" in capsys.readouterr().out


@pytest.mark.slow  # trains a run folder first: 30 s on 2 busy cores
def test_in_context_of_a_trained_run(tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(TEXT)
    run_dir = tmp_path / "run"
    sets = [arg for o in TINY for arg in ("--set", o)]
    assert main(["train", "transformer", *sets, "--steps", "2", "--batch-size", "2",
                 "--seq-len", "16", "--eval-every", "2", "--ckpt-every", "2",
                 "--data", str(corpus), "--out", str(run_dir), "--no-progress"]) == 0  # fmt: skip
    assert main(["eval", str(run_dir), "--task", "in-context", "--length", "40", "--piece", "9",
                 "--streams", "1", "--no-progress"]) == 0  # fmt: skip
    result = json.loads((run_dir / "eval" / "in-context.json").read_text())
    assert result["trained_steps"] == 2 and result["settings"]["data"] == str(corpus)
    assert result["trained_length"] == 16  # the run's --seq-len, dashed on the plot
    assert (run_dir / "eval" / "in-context.png").is_file()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--task", "in-context", "--set", "dims.d_model=8"]) == 1
    assert "a run folder is evaluated as it was trained" in capsys.readouterr().err
