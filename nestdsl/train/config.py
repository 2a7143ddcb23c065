"""What a training run is: its settings, the model it trains, and the run folder that records both.

* `TrainConfig` holds every training setting (defaults sized for about two minutes on a small
  CPU); `resolved()` fills in the values that depend on others so config.json is explicit.
* `ModelSource` is what gets trained: a spec's name, text, overrides, the optimizer of each
  trained (`every: step`) level, its vocabulary, and a function building a fresh model.
  `spec_source()` makes one with `nestdsl.load` and `nestdsl.compile` and checks the spec's
  vocabulary against the byte data before anything is written; tests build one around a toy.
* `TrainResult` is what a finished run reports; `TrainingInterrupted` is how Ctrl-C ends one.
* `RunFolder` owns `RUN/spec.yaml` and `RUN/config.json`: it refuses to overwrite a run that has
  checkpoints, and on `--resume` checks that spec, data and settings still match the run's.
  `resume_overrides()` reuses a run's recorded `--set` overrides (refusing only a conflict).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nestdsl.errors import Diagnostic, Position, SpecError, UserError
from nestdsl.optim.levels import SINGLE_LEVEL
from nestdsl.train.checkpoint import latest_checkpoint, step_dirs, write_file_atomically
from nestdsl.train.metrics import bits_per_byte
from nestdsl.train.schedule import default_warmup

CONFIG_FORMAT = "nestdsl-run-1"
# Everything a run folder may contain (and so may be replaced when a new run starts there).
RUN_FILES = {"spec.yaml", "config.json", "metrics.jsonl", "loss.png", "checkpoints"}

# Settings a resumed run may change: they do not alter the trajectory of the weights. A larger
# `steps` extends the run past its schedule (`schedule_steps`, fixed at the start) at the floor
# rate: the learning rate never jumps on resume.
CHANGEABLE_ON_RESUME = ("steps", "device", "eval_every", "ckpt_every", "keep_checkpoints", "log")
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
    val_fraction: float = 0.05
    data: str | None = None  # corpus file; None: the embedded Shakespeare
    log: str = "jsonl"  # also "tensorboard": event files beside metrics.jsonl

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
        if self.grad_clip < 0:
            raise UserError(f"--grad-clip must be non-negative, got {self.grad_clip}")

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

    def trained_levels(self) -> dict[str, dict]:
        """Level name -> optimizer config, in the spec's order (the first is the primary)."""
        return {k: dict(v) for k, v in self.levels.items()} if self.levels else {
            SINGLE_LEVEL: dict(self.optimizer)
        }

    def check_vocab(self, data_vocab: int) -> None:
        """SpecError at the spec's vocabulary unless it is the data's: nothing else fits."""
        if self.vocab is None or self.vocab == data_vocab:
            return
        waste = "its logits for the extra ids are never a target" if self.vocab > data_vocab else (
            "bytes above it have no embedding row"
        )
        raise SpecError([Diagnostic(
            "vocab-mismatch",
            f"the spec's vocabulary is {self.vocab}, but training reads bytes: "
            f"{data_vocab} token ids ({waste})",
            self.vocab_at,
            f"use vocab {data_vocab} (e.g. --set dims.vocab={data_vocab})",
        )])  # fmt: skip

    @property
    def spec_sha256(self) -> str:
        return hashlib.sha256(self.spec_text.encode()).hexdigest()

    def identity(self) -> dict:
        return {"name": self.name, "sha256": self.spec_sha256, "overrides": list(self.overrides)}


def spec_source(name_or_path: str, overrides: list[str] | None = None) -> ModelSource:
    """A ModelSource for a shipped spec name or a spec file, via nestdsl.load / nestdsl.compile."""
    import nestdsl

    if not (hasattr(nestdsl, "load") and hasattr(nestdsl, "compile")):
        raise UserError("this nestdsl build has no spec compiler (nestdsl.load / nestdsl.compile)")
    spec = nestdsl.load(name_or_path, overrides=list(overrides) if overrides else None)
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
        overrides=list(overrides or []),
        levels=levels,
        vocab=vocab,
        vocab_at=vocab_at,
    )


def _spec_vocab(spec) -> tuple[int, Position | None]:
    """The spec's vocabulary size and where it is written (a dims line or a --set flag)."""
    from nestdsl.spec.dims import evaluate

    written = spec.spec.embed.vocab
    size = evaluate(written, dict(spec.spec.dims))
    if isinstance(written, str) and written in spec.spec.dims:
        return size, spec.source.find(("dims", written))
    return size, spec.source.find(("embed", "vocab"))


class RunFolder:
    """The files of one run: spec.yaml, config.json, metrics.jsonl, loss.png, checkpoints/."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.spec = self.root / "spec.yaml"
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.plot = self.root / "loss.png"
        self.checkpoints = self.root / "checkpoints"

    def has_checkpoints(self) -> bool:
        return bool(step_dirs(self.checkpoints)) or (self.checkpoints / "latest").exists()

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoints)

    def _is_run_config(self) -> bool:
        try:
            return json.loads(self.config.read_text()).get("format") == CONFIG_FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    def read_config(self) -> dict:
        try:
            saved = json.loads(self.config.read_text())
        except FileNotFoundError:
            raise UserError(
                f"{self.root} is not a run folder: {self.config.name} is missing"
            ) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{self.config} is unreadable or corrupt ({err})") from None
        if not isinstance(saved, dict) or saved.get("format") != CONFIG_FORMAT:
            raise UserError(f"{self.config} is not a nestdsl run config")
        return saved

    def start(self, source: ModelSource, config: TrainConfig, record: dict) -> None:
        """Begin a new run here: refuse a folder with checkpoints, clear old logs, write the spec."""
        if self.has_checkpoints():
            raise UserError(
                f"{self.root} already holds a run with checkpoints; "
                "pass --resume to continue it or --out to start a new run elsewhere"
            )
        if self.root.is_dir():
            # Never scribble over a folder that is not a run (e.g. --out . in a project).
            strangers = sorted(
                p.name
                for p in self.root.iterdir()
                if p.name not in RUN_FILES and ".tmp-" not in p.name
            )
            if strangers or (self.config.exists() and not self._is_run_config()):
                shown = ", ".join(strangers[:3]) or self.config.name
                raise UserError(
                    f"{self.root} is not empty and not a run folder (it holds {shown}); choose another --out"
                )
        elif self.root.exists():
            raise UserError(f"{self.root} exists and is not a folder; choose another --out")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in (self.metrics, self.plot):
                stale.unlink(missing_ok=True)
            write_file_atomically(self.spec, source.spec_text.encode())
            body = {
                "format": CONFIG_FORMAT,
                "spec": source.identity(),
                "train": config.as_dict(),
                **record,
            }
            write_file_atomically(self.config, json.dumps(body, indent=1).encode())
        except OSError as err:
            raise UserError(
                f"cannot write the run folder {self.root}: {err.strerror or err}"
            ) from None

    def schedule_steps(self) -> int | None:
        """The schedule length the run here started with (None when there is no run)."""
        try:
            saved = self.read_config()
        except UserError:
            return None
        length = saved.get("train", {}).get("schedule_steps")
        return length or saved.get("schedule", {}).get("total_steps")

    def check_resume(self, source: ModelSource, config: TrainConfig, record: dict) -> dict:
        """Check that resuming here with `source`, `config` and `record` continues the same run."""
        if not self.root.is_dir():
            raise UserError(f"nothing to resume: {self.root} does not exist")
        saved = self.read_config()
        if self.latest_checkpoint() is None:
            raise UserError(
                f"nothing to resume: {self.root} has no checkpoint yet; start it again without --resume"
            )
        spec = saved["spec"]
        if spec["name"] != source.name:
            raise UserError(
                f"{self.root} was trained from spec {spec['name']!r}, not {source.name!r}; "
                "resume with the same spec or pass another --out"
            )
        if spec["sha256"] != source.spec_sha256:
            raise UserError(
                f"the text of spec {source.name!r} differs from the one {self.root} was trained with; "
                f"resume with the saved copy: {self.spec}"
            )
        if spec["overrides"] != list(source.overrides):
            shown = " ".join(spec["overrides"]) or "none"
            raise UserError(
                f"{self.root} was started with --set overrides {shown}; resume with the same ones"
            )  # resume_overrides() gives them; a ModelSource made by hand may not
        data_now, data_then = record.get("data", {}), saved.get("data", {})
        if data_then.get("sha256") != data_now.get("sha256"):
            raise UserError(
                f"the training data differs from the data {self.root} was trained on "
                f"({data_then.get('name', '?')}); resume with the same --data"
            )
        then, now = saved["train"], config.as_dict()
        for name, value in now.items():
            if name in CHANGEABLE_ON_RESUME or then.get(name) == value:
                continue
            raise UserError(
                f"{self.root} was started with {flag_name(name)} {then.get(name)}, now {value}; a resumed "
                "run keeps its settings (only --steps, --device, --eval-every, --ckpt-every, "
                "--keep-checkpoints and --log may change)"
            )
        if config.carry_state and saved.get("world_size") != record.get("world_size"):
            raise UserError(
                f"{self.root} carries in-context memory for {saved.get('world_size')} process(es); "
                f"resume it with the same number, not {record.get('world_size')}"
            )
        return saved

    def update_config(self, source: ModelSource, config: TrainConfig, record: dict) -> None:
        """Rewrite config.json after a resume changed one of the changeable settings."""
        body = {
            "format": CONFIG_FORMAT,
            "spec": source.identity(),
            "train": config.as_dict(),
            **record,
        }
        try:
            write_file_atomically(self.config, json.dumps(body, indent=1).encode())
        except OSError as err:
            raise UserError(f"cannot write {self.config}: {err.strerror or err}") from None


def _override_pairs(overrides: list[str]) -> dict[str, str]:
    pairs = {}
    for item in overrides:
        key, _, value = item.partition("=")
        pairs[key.strip()] = value.strip()
    return pairs


def resume_overrides(run_dir: str | Path, given: list[str]) -> list[str]:
    """The `--set` overrides a run was started with; `given` ones must agree with them.

    Repeating an override (or leaving it out) is fine; a new key or another value would build a
    different model than the checkpoint's, and is refused with the run's own value.
    """
    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise UserError(f"nothing to resume: {folder.root} does not exist")
    recorded = list(folder.read_config()["spec"].get("overrides") or [])
    saved = _override_pairs(recorded)
    for key, value in _override_pairs(list(given)).items():
        if key not in saved:
            raise UserError(
                f"{folder.root} was started without --set {key}; a resumed run keeps its model "
                "(drop the flag, or start a new run with --out)"
            )
        if saved[key] != value:
            raise UserError(
                f"{folder.root} was started with --set {key}={saved[key]}, not {value}; a resumed "
                "run keeps its model (drop the flag to reuse the run's value)"
            )
    return recorded


def resume_config(run_dir: str | Path, given: dict) -> TrainConfig:
    """The saved settings of the run in `run_dir` with the explicitly `given` ones applied.

    Given settings that would change the run's trajectory raise UserError (see check_resume).
    """
    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise UserError(f"nothing to resume: {folder.root} does not exist")
    record = folder.read_config()
    saved = TrainConfig.from_dict(record["train"]).as_dict()
    if saved.get("schedule_steps") is None:  # runs of earlier versions: the recorded schedule
        saved["schedule_steps"] = record.get("schedule", {}).get("total_steps") or saved["steps"]
    for name, value in given.items():
        if name not in saved:
            raise ValueError(f"unknown training setting {name!r}")
        if name not in CHANGEABLE_ON_RESUME and saved[name] != value:
            raise UserError(
                f"{folder.root} was started with {flag_name(name)} {saved[name]}, not {value}; a resumed "
                "run keeps its settings (only --steps, --device, --eval-every, --ckpt-every, "
                "--keep-checkpoints and --log may change)"
            )
        saved[name] = value
    return TrainConfig.from_dict(saved)


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM during training; the message says how to resume. `signal` is the
    signal's number (the command exits with 128 + it)."""

    def __init__(self, message: str, signal: int = 2) -> None:
        super().__init__(message)
        self.signal = signal


@dataclass
class TrainResult:
    run_dir: Path
    plot: Path
    checkpoint: Path | None
    step: int
    train_loss: float | None
    val_loss: float | None
    is_main: bool = True

    @property
    def train_bpb(self) -> float | None:
        return None if self.train_loss is None else bits_per_byte(self.train_loss)

    @property
    def val_bpb(self) -> float | None:
        return None if self.val_loss is None else bits_per_byte(self.val_loss)
