"""What a training run is: its settings and the model it trains (folder.py records both).

* `TrainConfig` holds every training setting (defaults sized for about two minutes on a small
  CPU); `resolved()` fills in the values that depend on others so config.json is explicit.
* `ModelSource` is what gets trained: a spec's name, text, overrides, the optimizer of each
  trained (`every: step`) level, its vocabulary, and a function building a fresh model.
  `spec_source()` makes one with `nestdsl.load` and `nestdsl.compile`; under a tokenizer other
  than bytes the spec's vocabulary follows the tokenizer's (a `dims.vocab=N` override, recorded
  with the run's overrides); the loop checks the vocabulary against the tokenizer before
  anything is written. Tests build one around a toy.
* `TrainResult` is what a finished run reports; `TrainingInterrupted` is how Ctrl-C or SIGTERM
  ends one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nestdsl.compiler.plan import check_recompute
from nestdsl.data.tokenizer import BYTES, check_name, vocab_of
from nestdsl.errors import Diagnostic, Position, SpecError, UserError
from nestdsl.optim.levels import SINGLE_LEVEL
from nestdsl.train.schedule import default_warmup

LOG_CHOICES = ("jsonl", "tensorboard")


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8  # global batch, split over DDP ranks
    seq_len: int = 128
    lr: float | None = None  # None: the spec's outer optimizer lr
    warmup_steps: int | None = None  # None: default_warmup(steps)
    schedule_steps: int | None = None  # the cosine's length; None: steps (fixed once a run starts)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    eval_every: int = 25  # 13 points on the default run: the validation curve is a curve
    eval_batches: int = 8
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    carry_state: bool = False  # stream the corpus and carry in-context memory across steps
    recompute: str = "auto"  # recomputed spans: auto, spans, N tokens per span or off
    val_fraction: float = 0.05
    data: str | None = None  # corpus file; None: the embedded Shakespeare
    log: str = "jsonl"  # also "tensorboard": event files beside metrics.jsonl
    tokenizer: str = BYTES  # or "bpe:N", trained on the training text (data/tokenizer.py)
    init_from: str | None = None  # a run folder whose latest weights start a new run (init_from.py)
    init_map: list[str] = field(default_factory=list)  # DEST=SRC name prefixes for init_from

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "seq_len",
            "eval_every",
            "eval_batches",
            "ckpt_every",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.keep_checkpoints < 1:
            raise UserError(f"--keep-checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        length = self.schedule_steps or self.steps
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise UserError(f"the schedule length must be at least 1, got {self.schedule_steps}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= length:
            raise UserError(
                f"--warmup must be between 0 and --steps ({length}), got {self.warmup_steps}"
            )
        if self.log not in LOG_CHOICES:
            raise UserError(f"--log must be one of {', '.join(LOG_CHOICES)}, got {self.log!r}")
        try:
            check_recompute(self.recompute)
        except ValueError as err:
            raise UserError(f"--{err}") from None
        if self.grad_clip < 0:
            raise UserError(f"--grad-clip must be non-negative, got {self.grad_clip}")
        check_name(self.tokenizer)
        if self.init_map and self.init_from is None:
            raise UserError("--init-map renames tensors of --init-from RUN; pass --init-from too")

    def resolved(self, spec_lr: float) -> TrainConfig:
        """A copy with lr, warmup and schedule length explicit (what config.json records)."""
        length = self.schedule_steps or self.steps
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else float(spec_lr),
            warmup_steps=self.warmup_steps
            if self.warmup_steps is not None
            else default_warmup(length),
            schedule_steps=length,
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def flag_name(setting: str) -> str:
    """The command-line flag of a TrainConfig field, for messages."""
    return {"warmup_steps": "--warmup", "data": "--data", "schedule_steps": "the schedule length"}.get(
        setting, "--" + setting.replace("_", "-")
    )


@dataclass
class ModelSource:
    """A model to train: where it comes from (for the run folder) and how to build it.

    `levels` maps each trained level to its optimizer config; without it the model is one level
    trained by `optimizer`. `vocab` (with `vocab_at`, where the spec sets it) is checked against
    the data's tokenizer before a run starts.
    """

    name: str
    spec_text: str
    build: Callable[[], torch.nn.Module]
    optimizer: dict = field(default_factory=lambda: {"kind": "adamw", "lr": 3e-4})
    overrides: list[str] = field(default_factory=list)
    levels: dict[str, dict] | None = None
    vocab: int | None = None
    vocab_at: Position | None = None
    checked: Any = None  # the CheckedSpec it came from, if any (what `train` summarizes)

    def trained_levels(self) -> dict[str, dict]:
        """Level name -> optimizer config, in the spec's order (the first is the primary)."""
        return {k: dict(v) for k, v in self.levels.items()} if self.levels else {
            SINGLE_LEVEL: dict(self.optimizer)
        }

    def check_vocab(self, data_vocab: int, tokenizer: str = BYTES) -> None:
        """SpecError at the spec's vocabulary unless it is the data's: nothing else fits."""
        if self.vocab is None or self.vocab == data_vocab:
            return
        waste = "its logits for the extra ids are never a target" if self.vocab > data_vocab else (
            "token ids above it have no embedding row"
        )
        reads = "bytes" if tokenizer == BYTES else f"tokens of {tokenizer}"
        raise SpecError([Diagnostic(
            "vocab-mismatch",
            f"the spec's vocabulary is {self.vocab}, but training reads {reads}: "
            f"{data_vocab} token ids ({waste})",
            self.vocab_at,
            f"use vocab {data_vocab} (e.g. --set dims.vocab={data_vocab})",
        )])  # fmt: skip

    @property
    def spec_sha256(self) -> str:
        return hashlib.sha256(self.spec_text.encode()).hexdigest()

    def identity(self) -> dict:
        return {"name": self.name, "sha256": self.spec_sha256, "overrides": list(self.overrides)}


def spec_source(
    name_or_path: str, overrides: list[str] | None = None, tokenizer: str = BYTES
) -> ModelSource:
    """A ModelSource for a shipped spec name or a spec file, via nestdsl.load / nestdsl.compile.

    Under a `tokenizer` other than bytes, a spec whose vocabulary differs from the tokenizer's
    gets one more override that sets it (`vocab_override`), unless the given overrides set the
    vocabulary themselves (then the loop's check_vocab refuses a mismatch at that --set flag).
    """
    import nestdsl

    if not (hasattr(nestdsl, "load") and hasattr(nestdsl, "compile")):
        raise UserError("this nestdsl build has no spec compiler (nestdsl.load / nestdsl.compile)")
    overrides = list(overrides or [])
    spec = nestdsl.load(name_or_path, overrides=overrides or None)
    extra = vocab_override(spec, tokenizer, overrides)
    if extra is not None:
        overrides.append(extra)
        spec = nestdsl.load(name_or_path, overrides=overrides)
    levels = {
        name: level.optimizer.model_dump(mode="json")
        for name, level in spec.spec.levels.items()
        if level.every == "step" and level.optimizer is not None
    }
    vocab, vocab_at = _spec_vocab(spec)
    return ModelSource(
        name=spec.name,
        spec_text=spec.source_text,
        build=lambda: nestdsl.compile(spec),
        optimizer=next(iter(levels.values())),
        overrides=overrides,
        levels=levels,
        vocab=vocab,
        vocab_at=vocab_at,
        checked=spec,
    )


def vocab_override(spec, tokenizer: str, overrides: list[str]) -> str | None:
    """The `--set` override that gives `spec` the vocabulary of `tokenizer`, or None when none
    is needed: bytes (a spec is refused, not changed, when its vocabulary is not 256), a spec
    that already has it, or overrides that set it already."""
    if tokenizer == BYTES:
        return None
    size, _ = _spec_vocab(spec)
    if size == vocab_of(tokenizer):
        return None
    written = spec.spec.embed.vocab
    key = f"dims.{written}" if isinstance(written, str) and written in spec.spec.dims else (
        "embed.vocab")  # fmt: skip
    if any(item.partition("=")[0].strip() == key for item in overrides):
        return None
    return f"{key}={vocab_of(tokenizer)}"


def _spec_vocab(spec) -> tuple[int, Position | None]:
    """The spec's vocabulary size and where it is written (a dims line or a --set flag)."""
    from nestdsl.spec.dims import evaluate

    written = spec.spec.embed.vocab
    size = evaluate(written, dict(spec.spec.dims))
    if isinstance(written, str) and written in spec.spec.dims:
        return size, spec.source.find(("dims", written))
    return size, spec.source.find(("embed", "vocab"))


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM during training; the message says how to resume. `signal` is the
    signal's number (the command exits with 128 + it)."""

    def __init__(self, message: str, signal: int = 2) -> None:
        super().__init__(message)
        self.signal = signal


@dataclass
class TrainResult:
    """Losses in nats per token; `*_bpb` in bits per byte (equal up to ln 2 for bytes)."""

    run_dir: Path
    plot: Path
    checkpoint: Path | None
    step: int
    train_loss: float | None
    val_loss: float | None
    is_main: bool = True
    train_bpb: float | None = None
    val_bpb: float | None = None
