"""The `bpb` task: bits per byte of a model on held-out text.

Protocol (the byte-level form of the perplexity evaluations of Titans §5.2 and Nested Learning
§7, as bits per byte rather than per token so that models with any tokenizer compare):

* the text is the validation part of a corpus, its last `val_fraction` (5%) of bytes, as
  `nestdsl train` holds it out: the embedded Shakespeare, a run's own `--data`, or `--data FILE`;
* its first `max_bytes + 1` bytes are encoded with the subject's tokenizer (bytes, or the BPE
  a run trained and saved in its folder), and the token ids are cut into consecutive,
  non-overlapping windows of `seq_len + 1` tokens that share one token at each border, so
  every token after the first is predicted exactly once; every window starts from fresh
  in-context memories (as `nestdsl train` validates); the tail shorter than a window is
  dropped, so at most `max_bytes` bytes are scored, from the start of the held-out text;
* bpb = (sum of next-token cross-entropies in nats) / (bytes of text the predicted tokens
  stand for) / ln 2. For bytes that is nats per byte / ln 2, and a uniform guess over 256
  bytes scores exactly 8; for a BPE the nats of a token are spread over its bytes, so the
  number is the same kind of quantity whatever the tokenizer (the cost, in bits, of coding the
  text's bytes with the model), and byte and BPE models compare.

The subject is a run folder (its latest checkpoint and tokenizer; seq_len and corpus default to
the run's) or a spec, read as bytes and compiled with its seeded initial weights: an untrained
baseline.
"""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from nestdsl.data.corpus import load_corpus, split_corpus
from nestdsl.data.tokenizer import ByteTokenizer, Tokenizer
from nestdsl.errors import UserError
from nestdsl.eval.subject import load_scored
from nestdsl.train.metrics import bits_per_byte, language_model_loss

DEFAULT_SEQ_LEN = 128
DEFAULT_MAX_BYTES = 1 << 18  # 256 KiB: all of Shakespeare's held-out tail at the default split


def heldout_windows(
    text: bytes, seq_len: int, max_bytes: int, tokenizer: Tokenizer | None = None
) -> torch.Tensor:
    """Windows `[n, seq_len + 1]` of the token ids of the first `max_bytes + 1` bytes (bytes by
    default), consecutive, sharing borders.

    The tail shorter than a window is dropped, so every scored token has a full context window.
    """
    if seq_len < 1 or max_bytes < 1:
        raise UserError(f"bpb: seq_len and max_bytes must be positive, got {seq_len}, {max_bytes}")
    tokenizer = tokenizer or ByteTokenizer()
    data = tokenizer.encode(text[: max_bytes + 1]).long()  # [n_tokens]
    n = (data.numel() - 1) // seq_len
    if n < 1:
        unit = "bytes" if isinstance(tokenizer, ByteTokenizer) else f"{tokenizer.name} tokens"
        raise UserError(
            f"bpb: the held-out text has {data.numel()} {unit}, fewer than seq_len + 1 = "
            f"{seq_len + 1}; use a smaller --seq-len or a larger --data file"
        )
    starts = torch.arange(n) * seq_len  # [n]
    return data[starts[:, None] + torch.arange(seq_len + 1)]  # [n, seq_len + 1]


@torch.no_grad()
def bits_per_byte_of(
    model,
    windows: torch.Tensor,
    batch_size: int,
    device,
    progress: bool = False,
    token_bytes: torch.Tensor | None = None,
) -> tuple[float, int]:
    """(bpb, bytes predicted) of `model` over `windows`, fresh memory per window.

    `token_bytes` (`[V]`, the tokenizer's bytes per token id; None: one byte each) gives the
    bytes each predicted token stands for: bpb = all nats / all those bytes / ln 2.
    """
    model.eval()
    total, covered = 0.0, 0
    starts = range(0, windows.shape[0], batch_size)
    for start in tqdm(starts, desc="bpb", disable=not progress, file=sys.stderr, leave=False):
        rows = windows[start : start + batch_size]  # [b, T + 1]
        logits, _ = model(rows[:, :-1].to(device))  # [b, T, vocab]
        total += language_model_loss(logits, rows[:, 1:].to(device), reduction="sum").item()
        targets = rows[:, 1:]  # [b, T]
        covered += targets.numel() if token_bytes is None else int(token_bytes[targets].sum())
    return bits_per_byte(total / covered), covered


def run_bpb(
    subject: str,
    data: str | None = None,
    seq_len: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    overrides: list[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Score a run folder or a spec on held-out bytes; a JSON-able result."""
    device = torch.device(device)
    scored = load_scored(subject, device, overrides, seed, "bpb")
    model, name, step, tokenizer = scored.model, scored.name, scored.step, scored.tokenizer
    data = data if data is not None else scored.data
    seq_len = seq_len or scored.seq_len or DEFAULT_SEQ_LEN
    val_fraction = scored.val_fraction
    if getattr(model, "vocab", tokenizer.vocab_size) != tokenizer.vocab_size:
        raise UserError(
            f"bpb: the model's vocabulary is {model.vocab}, not the {tokenizer.vocab_size} "
            f"token ids of {tokenizer.name}"
        )
    text = split_corpus(load_corpus(data), val_fraction).validation
    windows = heldout_windows(text, seq_len, max_bytes, tokenizer)
    bpb, count = bits_per_byte_of(
        model, windows, batch_size, device, progress, tokenizer.token_bytes
    )
    return {
        "task": "bpb",
        "spec": name,
        "subject": subject,
        "trained_steps": step,
        "protocol": "bits per byte on the held-out tail of the corpus, non-overlapping windows "
        "of tokens, fresh memory per window; nats over the bytes the predicted tokens cover",
        "settings": {
            "data": data or "shakespeare (embedded)",
            "val_fraction": val_fraction,
            "seq_len": seq_len,
            "tokenizer": tokenizer.name,
            "max_bytes": max_bytes,
            "device": str(device),
        },
        "bytes": count,
        "tokens": int(windows[:, 1:].numel()),
        "bpb": round(bpb, 6),
    }


# `nestdsl eval --task bpb` (nestdsl/commands/eval.py reads these three names).
FLAGS = {
    "data": {"metavar": "FILE", "help": "corpus whose held-out tail is scored"},
    "seq_len": {"type": int, "metavar": "T", "help": "tokens per window (default: the run's)"},
    "max_bytes": {
        "type": int,
        "metavar": "N",
        "help": f"bytes scored (default {DEFAULT_MAX_BYTES})",
    },
}


def run_cli(subject: str, given: dict, context) -> dict:
    return run_bpb(
        subject, given.get("data"), given.get("seq_len"),
        given.get("max_bytes", DEFAULT_MAX_BYTES), device=context.device,
        overrides=context.overrides, seed=context.seed, progress=context.progress,
    )  # fmt: skip


def summary(result: dict) -> str:
    return (
        f"{result['spec']}: {result['bpb']:.4f} bits per byte over {result['bytes']:,} "
        f"held-out bytes (trained steps: {result['trained_steps']})"
    )
