"""The `in-context` task: loss as a function of position over one long stream.

A memory that learns at test time predicts a text better the more of it it has read; this task
draws that curve (the test-time learning curve: Titans §5.5's and Nested Learning §7's
long-context plots of loss against context position, at byte level):

* the text is the validation part of a corpus (its last 5% of bytes, as `nestdsl train` holds
  it out): a run's own corpus, `--data FILE` or an embedded name, or the embedded Shakespeare;
* `--streams` S streams of `--length` T + 1 bytes start at evenly spaced offsets of that text
  (the first at 0, the last ending at its end; they overlap only when S * (T + 1) exceeds it);
* each stream is fed to the model in consecutive pieces of `--piece` bytes, the state returned
  by one piece passed to the next (`model(tokens, state)`), so the stream is one sequence that
  never resets and its length is bounded by time only, not by memory for activations;
* position t (0-based) scores the next-byte cross-entropy of byte t + 1 after reading t + 1
  bytes; the per-position loss is averaged over the streams, then over log-spaced buckets of
  the bytes read, [1], [2, 3], [4, 7], ... [2^b, 2^(b+1) - 1] (the last ends at T), in bits per
  byte; `bpb` is the mean over every scored byte. A uniform guess scores exactly 8.

The subject is a run folder (its latest checkpoint) or a spec, compiled with its seeded initial
weights (an untrained baseline: its curve is flat unless the memory learns in context by
construction). The JSON holds the buckets and, for a run, the sequence length it was trained
at (`trained_length`: a curve that rises past it shows a model that does not generalize to
longer contexts); the plot (bits per byte against bytes read, log x, the training length
dashed) is a PNG beside it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nestdsl.data.corpus import load_corpus, split_corpus
from nestdsl.errors import UserError
from nestdsl.eval.subject import load_scored

DEFAULT_LENGTH = 16384
DEFAULT_PIECE = 512
DEFAULT_STREAMS = 4


def stream_offsets(text_bytes: int, length: int, streams: int) -> list[int]:
    """Start offsets of `streams` windows of `length + 1` bytes, evenly spaced over the text."""
    if length < 1 or streams < 1:
        raise UserError(f"in-context: --length and --streams must be positive, got {length}, "
                        f"{streams}")  # fmt: skip
    room = text_bytes - (length + 1)
    if room < 0:
        raise UserError(
            f"in-context: the held-out text has {text_bytes:,} bytes, fewer than --length + 1 = "
            f"{length + 1:,}; use a smaller --length or a larger --data file"
        )
    if streams == 1:
        return [0]
    return [round(i * room / (streams - 1)) for i in range(streams)]


def stream_tensor(text: bytes, offsets: list[int], length: int) -> torch.Tensor:
    """The streams as one batch `[S, length + 1]` of bytes."""
    rows = [list(text[o : o + length + 1]) for o in offsets]
    return torch.tensor(rows, dtype=torch.long)  # [S, T + 1]


@torch.no_grad()
def position_losses(
    model, streams: torch.Tensor, piece: int, device, progress: bool = False
) -> torch.Tensor:
    """Next-byte loss (nats) at every position, mean over streams: `[T]` float64.

    The streams `[S, T + 1]` are fed `piece` bytes at a time, the state carried between pieces.
    """
    if piece < 1:
        raise UserError(f"in-context: --piece must be positive, got {piece}")
    model.eval()
    T = streams.shape[1] - 1
    curve = torch.empty(T, dtype=torch.float64)  # [T]
    state = None
    starts = range(0, T, piece)
    for start in tqdm(starts, desc="in-context", disable=not progress, file=sys.stderr,
                      leave=False, dynamic_ncols=True):  # fmt: skip
        end = min(T, start + piece)
        x = streams[:, start:end].to(device)  # [S, p]
        y = streams[:, start + 1 : end + 1].to(device)  # [S, p]
        logits, state = model(x, state)  # [S, p, 256]
        # The loss in at least float32 whatever the model runs in (float64 stays float64).
        scores = logits.to(torch.promote_types(logits.dtype, torch.float32))  # [S, p, 256]
        loss = F.cross_entropy(scores.transpose(1, 2), y, reduction="none")  # [S, p]
        curve[start:end] = loss.double().mean(dim=0).cpu()
    return curve


def log_buckets(curve: torch.Tensor) -> list[dict]:
    """The curve (nats per position) averaged over buckets of bytes read [2^b, 2^(b+1) - 1].

    Position t has read t + 1 bytes. The last bucket ends at T, and takes in a remainder shorter
    than half the bucket that would follow it (T = 2^n ends with [2^(n-1), 2^n], not a bucket of
    one position). Each bucket gives its first and last count of bytes read, how many positions
    it holds and their mean in bits per byte.
    """
    T = curve.shape[0]
    buckets, low = [], 1
    while low <= T:
        high = min(2 * low - 1, T)  # inclusive
        if T - high < low:  # a remainder shorter than half the next bucket joins this one
            high = T
        part = curve[low - 1 : high]  # [high - low + 1]
        buckets.append({
            "from": low, "to": high, "positions": high - low + 1,
            "bpb": round(part.mean().item() / math.log(2), 6),
        })  # fmt: skip
        low = high + 1
    return buckets


def run_in_context(
    subject: str,
    data: str | None = None,
    length: int = DEFAULT_LENGTH,
    piece: int = DEFAULT_PIECE,
    streams: int = DEFAULT_STREAMS,
    device: torch.device | str = "cpu",
    overrides: list[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The test-time learning curve of a run folder or a spec; a JSON-able result."""
    device = torch.device(device)
    scored = load_scored(subject, device, overrides, seed, "in-context")
    model, name, step = scored.model, scored.name, scored.step
    data = data if data is not None else scored.data
    val_fraction = scored.val_fraction
    trained_length = scored.seq_len  # where a model that fails past it starts to
    if getattr(model, "vocab", 256) != 256:
        raise UserError(
            f"in-context: the model's vocabulary is {model.vocab}, not the 256 bytes this task "
            "scores in bits per byte"
        )
    text = split_corpus(load_corpus(data), val_fraction).validation
    offsets = stream_offsets(len(text), length, streams)
    curve = position_losses(model, stream_tensor(text, offsets, length), piece, device, progress)
    return {
        "task": "in-context",
        "spec": name,
        "subject": subject,
        "trained_steps": step,
        "trained_length": trained_length,
        "protocol": "next-byte loss by position over streams of held-out text fed in pieces "
        "with the state carried (one sequence, never reset); log2-spaced buckets of bytes read",
        "settings": {
            "data": data or "shakespeare (embedded)",
            "val_fraction": val_fraction,
            "length": length,
            "piece": piece,
            "streams": streams,
            "offsets": offsets,
            "seed": seed,
            "device": str(device),
        },
        "bytes": length * streams,
        "bpb": round(curve.mean().item() / math.log(2), 6),
        "buckets": log_buckets(curve),
    }


def curve_plot(result: dict):
    """Bits per byte against bytes read (log x), one point per bucket at its middle."""
    from nestdsl.eval.plots import curve_figure

    buckets = result["buckets"]
    x = [math.sqrt(b["from"] * b["to"]) for b in buckets]  # the geometric middle
    y = [b["bpb"] for b in buckets]
    s = result["settings"]
    title = (f"{result['spec']} ({result['trained_steps']} steps): {s['streams']} streams of "
             f"{s['length']:,} bytes, pieces of {s['piece']}")  # fmt: skip
    trained = result.get("trained_length")
    marks = {f"training length ({trained})": trained} if trained else {}
    return curve_figure({result["spec"]: (x, y)}, title, "bytes read", "bits per byte", marks)


# `nestdsl eval --task in-context` (nestdsl/commands/eval.py reads these three names).
FLAGS = {
    "data": {"metavar": "FILE", "help": "corpus whose held-out tail is scored"},
    "length": {"type": int, "metavar": "T", "help": f"bytes per stream (default {DEFAULT_LENGTH})"},
    "piece": {"type": int, "metavar": "P", "help": f"bytes fed per call (default {DEFAULT_PIECE})"},
    "streams": {"type": int, "metavar": "S", "help": f"streams averaged (default {DEFAULT_STREAMS})"},
}  # fmt: skip


def run_cli(subject: str, given: dict, context) -> dict:
    from nestdsl.eval.plots import save_png
    from nestdsl.eval.report import default_result_path

    result = run_in_context(
        subject, given.get("data"), given.get("length", DEFAULT_LENGTH),
        given.get("piece", DEFAULT_PIECE), given.get("streams", DEFAULT_STREAMS),
        context.device, context.overrides, context.seed, context.progress,
    )  # fmt: skip
    # The plot goes beside the JSON file: `context.out` when the command passes `--out`.
    out = getattr(context, "out", None) or default_result_path(
        subject, "in-context", result["spec"], context.run_folder
    )
    result["plot"] = str(save_png(curve_plot(result), Path(out).with_suffix(".png")))
    return result


def summary(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"{result['spec']}: {result['bpb']:.4f} bits per byte over {s['streams']} streams of "
        f"{s['length']:,} bytes (trained steps: {result['trained_steps']})",
        f"{'bytes read':>17} {'bpb':>8}",
    ]
    for b in result["buckets"]:
        lines.append(f"{b['from']:>8,}-{b['to']:<8,} {b['bpb']:>8.4f}")
    if "plot" in result:
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)
