"""`nestdsl train --tokenizer bpe:N` end to end on a tiny transformer: the tokenizer is trained
on the training text and saved in the run folder, the spec's vocabulary follows it, validation
is reported in bits per byte, and the run resumes exactly, generates and is scored by `eval`.
A byte run is what it always was."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import comparable_metrics, final_weights, interrupt_at

import nestdsl
from nestdsl.cli import main
from nestdsl.data import ByteBatches, split_corpus
from nestdsl.data.tokenizer import ByteTokenizer, train_tokenizer
from nestdsl.eval.bpb import run_bpb
from nestdsl.train.generate import generate_text
from nestdsl.train.metrics import read_metrics

SMALL = ["dims.d_model=16", "dims.n_heads=2", "dims.d_head=8", "dims.n_layers=1"]
EVAL_BATCHES = 8  # TrainConfig's default


def train_args(corpus_file, out, *more: str) -> list[str]:
    settings = ("--tokenizer bpe:300 --batch-size 2 --seq-len 16 --eval-every 2 --ckpt-every 2 "
                "--device cpu --no-progress").split()  # fmt: skip
    sets = [item for override in SMALL for item in ("--set", override)]
    return ["train", "transformer", "--data", str(corpus_file), "--out", str(out), *settings,
            *sets, *more]  # fmt: skip


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, corpus):
    """A bpe:300 run of 6 updates stopped (Ctrl-C) after 4, the same run resumed to its end,
    and an unbroken one."""
    root = tmp_path_factory.mktemp("bpe")
    corpus_file = root / "corpus.txt"
    corpus_file.write_bytes(corpus)
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 4)
        assert main(train_args(corpus_file, root / "four", "--steps", "6")) == 130
    shutil.copytree(root / "four", root / "resumed")
    assert main(train_args(corpus_file, root / "resumed", "--steps", "6", "--resume")) == 0
    assert main(train_args(corpus_file, root / "whole", "--steps", "6")) == 0
    return root


def test_the_run_folder_holds_the_tokenizer_trained_on_the_training_text(bpe_run, corpus):
    run = bpe_run / "four"
    expected = train_tokenizer("bpe:300", split_corpus(corpus).train)  # never the held-out tail
    assert (run / "tokenizer.json").read_text() == expected.to_json()
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["tokenizer"] == "bpe:300"
    assert config["tokenizer"] == {"name": "bpe:300", "vocab": 300, "sha256": expected.sha256}
    assert config["spec"]["overrides"] == [*SMALL, "dims.vocab=300"]  # the vocabulary followed
    loaded = nestdsl.load_run(run)
    assert loaded.model.vocab == 300 and loaded.tokenizer.sha256 == expected.sha256
    logits, _ = loaded.model(loaded.tokenizer.encode(b"KING:").long()[None])
    assert logits.shape[-1] == 300


def test_validation_is_bits_per_byte_of_the_tokens_bytes(bpe_run, corpus):
    """bpb = nats per token x tokens / bytes / ln 2, the bytes counted by decoding the targets."""
    run = bpe_run / "four"
    tokenizer = nestdsl.load_run(run).tokenizer
    held_out = tokenizer.encode(split_corpus(corpus).validation)
    batches = ByteBatches(held_out, split="val", batch_size=2, seq_len=16, seed=0)
    targets = [row for i in range(EVAL_BATCHES) for row in batches.batch(i).targets.tolist()]
    n_bytes = sum(len(tokenizer.decode(row)) for row in targets)
    n_tokens = sum(len(row) for row in targets)
    assert n_bytes > 1.2 * n_tokens  # merges cover several bytes: the conversion matters
    for record in read_metrics(run / "metrics.jsonl"):
        if record["kind"] == "val":
            expected = record["loss"] * n_tokens / n_bytes / math.log(2)
            assert record["bpb"] == pytest.approx(expected, rel=1e-9)


def test_a_resumed_bpe_run_equals_an_unbroken_one(bpe_run):
    assert comparable_metrics(bpe_run / "resumed") == comparable_metrics(bpe_run / "whole")
    weights = final_weights(bpe_run / "resumed")
    for name, tensor in final_weights(bpe_run / "whole").items():
        assert torch.equal(tensor, weights[name]), name


class Recorder(torch.nn.Module):
    """Wraps a model and records the token ids of every call."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.fed = model, []

    def forward(self, tokens, state=None):
        self.fed.append(tokens[0].tolist())
        return self.model(tokens, state=state)


def test_generate_encodes_and_decodes_with_the_runs_tokenizer(bpe_run, capsys):
    run = bpe_run / "four"
    prompt = "And the king said to the queen"
    capsys.readouterr()
    argv = ["generate", str(run), "--prompt", prompt, "--tokens", "12", "--temperature", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    loaded = nestdsl.load_run(run)
    recorder = Recorder(loaded.model)
    new = generate_text(recorder, prompt.encode(), 12, loaded.tokenizer, temperature=0.0,
                        whole_characters=True)  # fmt: skip
    assert printed == (prompt.encode() + new).decode("utf-8", errors="replace")
    prompt_ids = loaded.tokenizer.encode(prompt.encode()).tolist()
    assert len(prompt_ids) < len(prompt)  # the prompt went in as BPE tokens, merges and all
    assert recorder.fed[0] == prompt_ids  # fed once, then one token per call
    assert all(len(ids) == 1 for ids in recorder.fed[1:]) and 11 <= len(recorder.fed) - 1 <= 14


def test_eval_scores_a_bpe_run_in_bits_per_byte(bpe_run, corpus):
    run = bpe_run / "four"
    result = run_bpb(str(run), max_bytes=600, progress=False)
    assert result["settings"]["tokenizer"] == "bpe:300" and result["settings"]["seq_len"] == 16
    # By hand: the held-out text's first 601 bytes as tokens, windows of 17 sharing borders.
    loaded = nestdsl.load_run(run)
    ids = loaded.tokenizer.encode(split_corpus(corpus).validation[:601]).long().tolist()
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 16, 16):
            window = torch.tensor(ids[start : start + 17])
            logits, _ = loaded.model(window[None, :-1])
            nats += float(torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum"))
            n_bytes += sum(len(loaded.tokenizer.decode([t])) for t in window[1:].tolist())
    assert result["bytes"] == n_bytes <= 600
    assert result["bpb"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-5)


def test_a_resume_keeps_its_tokenizer(bpe_run, tmp_path, corpus, capsys):
    run = tmp_path / "run"
    shutil.copytree(bpe_run / "four", run)
    resume = train_args(bpe_run / "corpus.txt", run, "--steps", "6", "--resume")
    capsys.readouterr()
    assert main([*resume, "--tokenizer", "bytes"]) == 1
    assert "was started with --tokenizer bpe:300, not bytes" in capsys.readouterr().err
    other = train_tokenizer("bpe:300", corpus[:20_000])
    (run / "tokenizer.json").write_text(other.to_json())
    assert main(resume) == 1
    assert "is not the tokenizer" in capsys.readouterr().err
    (run / "tokenizer.json").unlink()
    assert main(resume) == 1
    assert "tokenizer.json is missing" in capsys.readouterr().err


def test_a_vocabulary_set_by_hand_must_be_the_tokenizers(tmp_path, corpus_file, capsys):
    argv = train_args(corpus_file, tmp_path / "run", "--steps", "1", "--set", "dims.vocab=512")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error[vocab-mismatch]: the spec's vocabulary is 512" in err
    assert "tokens of bpe:300: 300 token ids" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.usefixtures("fake_specs")
def test_a_byte_run_is_unchanged_and_resumes_from_before_tokenizers(tmp_path, our_cli, corpus_file):
    run = tmp_path / "run"
    argv = ["train", "toy", "--data", str(corpus_file), "--out", str(run), "--batch-size", "2",
            "--seq-len", "16", "--eval-every", "2", "--ckpt-every", "2", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    assert our_cli([*argv, "--steps", "2"]) == 0
    assert not (run / "tokenizer.json").exists()
    for record in read_metrics(run / "metrics.jsonl"):
        assert record["bpb"] == record["loss"] / math.log(2)  # one byte per token, exactly
    # A run folder written before tokenizers existed has no tokenizer in config.json.
    config = json.loads((run / "config.json").read_text())
    del config["train"]["tokenizer"], config["tokenizer"]
    (run / "config.json").write_text(json.dumps(config))
    assert isinstance(nestdsl.load_run(run).tokenizer, ByteTokenizer)
    assert our_cli([*argv, "--steps", "4", "--resume"]) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"] == [
        0, 2, 4,
    ]  # fmt: skip


def test_a_folder_that_is_taken_is_refused_before_the_tokenizer_trains(
    bpe_run, monkeypatch, capsys
):
    import nestdsl.train.loop as loop

    def never(*args):
        raise AssertionError("the tokenizer trained before the folder was checked")

    monkeypatch.setattr(loop, "train_tokenizer", never)
    capsys.readouterr()
    assert main(train_args(bpe_run / "corpus.txt", bpe_run / "four", "--steps", "6")) == 1
    assert "already holds a run with checkpoints" in capsys.readouterr().err
