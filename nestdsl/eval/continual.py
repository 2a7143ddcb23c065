"""The `continual` task: train one model on text domains in sequence and measure what it forgets.

Protocol (the task-incremental setting of Lopez-Paz & Ranzato 2017, §4, with text domains as
the tasks; the Nested Learning paper's continual-learning claim, NL §1 and §7, is that Hope's
multi-frequency memories forget less than a Transformer of equal size):

* the subject is a spec (a shipped name or a YAML file) trained **from scratch**: it is resized
  like `recall` (`--d-model`, `--heads`, `--layers`; default 64, 2, 2) and compiled with the
  seed. A trained run folder is refused: it has already seen some domain (the default corpus is
  Shakespeare), so its matrix would not start from a known state;
* the domains (default the four embedded corpora in the order shakespeare, kjv, milton, jargon;
  `--domains` takes embedded names or files) are trained on one after another, each stage
  `--steps-per-stage` updates of random windows from that domain's training part
  (nestdsl.data.batches, seeded by the seed, the domain and the step);
* one model and **one optimizer** for the whole sequence: the spec's own outer optimizers (one
  per `every: step` level, AdamW at lr 2e-3 for every shipped spec; `--lr` sets the primary
  level's), their moments carried from stage to stage; the learning rate warms up linearly over
  the first stage's first `warmup_steps` updates and then stays constant, so no stage is
  favoured by a decayed rate; gradient norm clipped at 1.0. Memories with `reset: never` carry
  their state from step to step and from stage to stage, as `nestdsl train` carries them;
* before training and after each stage every domain's held-out bits per byte is measured by the
  protocol of the `bpb` task (bpb.py: the first `--max-bytes` of the corpus' held-out tail, the
  last 5%; consecutive windows of `seq_len`, fresh in-context memory per window): row 0 is the
  untrained baseline b, row i the matrix row R[i-1]; R[i][j] = bpb on domain j after stage i;
* the metrics (nestdsl/eval/forgetting.py): average final bpb, backward transfer (negative =
  forgetting), forward transfer, and Chaudhry's forgetting per domain; a PNG with the heat map of
  R and each domain's bpb over the stages (continual_plot.py).

Resumable: after each stage the model, the optimizer, the random state and R so far are
checkpointed under `--work-dir` (default runs/eval/<spec>-continual-<hash of the spec, settings
and texts>/); running the same command again continues after the last finished stage (a
`--work-dir` holding another spec's or other settings' stages is refused).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import nestdsl
from nestdsl.data.batches import VOCAB, ByteBatches
from nestdsl.data.corpus import (
    EMBEDDED,
    corpus_fingerprint,
    corpus_label,
    load_corpus,
    split_corpus,
)
from nestdsl.errors import UserError
from nestdsl.eval.bpb import bits_per_byte_of, heldout_windows
from nestdsl.eval.checkpoints import Checkpoints, work_dir_for
from nestdsl.eval.continual_plot import plot_continual
from nestdsl.eval.forgetting import summarize
from nestdsl.eval.subject import Resize, resize_overrides
from nestdsl.optim import build_level_optimizers, build_optimizer, optimizer_settings
from nestdsl.train.config import spec_source
from nestdsl.train.distributed import seed_everything
from nestdsl.train.metrics import call_model, language_model_loss

DEFAULT_DOMAINS = tuple(EMBEDDED)


@dataclass(frozen=True)
class ContinualSettings:
    """How the stages are trained and scored (defaults: a few minutes per small spec on a CPU)."""

    domains: tuple[str, ...] = DEFAULT_DOMAINS
    steps_per_stage: int = 150
    batch_size: int = 16
    seq_len: int = 128
    lr: float | None = None  # None: the spec's own (the primary level's peak rate)
    warmup_steps: int = 15
    grad_clip: float = 1.0  # 0 turns clipping off
    max_bytes: int = 16384  # held-out bytes scored per domain
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    seed: int = 0

    def check(self) -> None:
        for name in ("steps_per_stage", "batch_size", "seq_len", "max_bytes", "d_model",
                     "heads", "layers"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(f"continual: {name} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"continual: the learning rate must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise UserError("continual: warmup_steps and grad_clip must be non-negative")
        if not self.domains:
            raise UserError("continual: --domains names no domain")
        labels = [corpus_label(d) for d in self.domains]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise UserError(
                f"continual: domain {', '.join(repeated)} appears twice in --domains; each "
                "domain is one stage and one column of R"
            )


@dataclass
class Domain:
    """One domain: its label, training batches and held-out windows."""

    label: str
    sha256: str
    batches: ByteBatches
    windows: torch.Tensor  # [n, seq_len + 1] held-out windows (bpb.py's protocol)


def load_domains(settings: ContinualSettings) -> list[Domain]:
    """Every domain of `settings`, in training order: its training part cut into seeded random
    windows, its held-out tail into the `bpb` task's windows."""
    out = []
    for name in settings.domains:
        text = load_corpus(name)
        split = split_corpus(text)
        label = corpus_label(name)
        batches = ByteBatches(
            split.train, split=f"continual/{label}", batch_size=settings.batch_size,
            seq_len=settings.seq_len, seed=settings.seed,
        )  # fmt: skip
        windows = heldout_windows(split.validation, settings.seq_len, settings.max_bytes)
        out.append(Domain(label, corpus_fingerprint(text), batches, windows))
    return out


def evaluate_row(model, domains: list[Domain], batch_size: int, device, progress: bool) -> list:
    """Held-out bpb of every domain (fresh memory per window); the model is left in train mode."""
    row = [round(bits_per_byte_of(model, d.windows, batch_size, device, progress)[0], 6)
           for d in domains]  # fmt: skip
    model.train()
    return row


class Learner:
    """One model and its optimizers through every stage; `memory` is what `reset: never`
    memories carry from step to step (empty for most models)."""

    def __init__(self, model, optimizer, settings: ContinualSettings, device) -> None:
        self.model, self.optimizer, self.settings, self.device = model, optimizer, settings, device
        self.memory: dict[str, torch.Tensor] = {}
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if device.type == "cuda"
            else contextlib.nullcontext
        )

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over the first updates of the first stage, then constant."""
        warm = min(self.settings.warmup_steps, self.settings.steps_per_stage)
        return min(1.0, (step + 1) / warm) if warm else 1.0

    def train_stage(
        self, stage: int, domain: Domain, progress: bool = False, label: str = ""
    ) -> float:
        """`steps_per_stage` updates on `domain`; the mean training loss of the stage (nats)."""
        steps = self.settings.steps_per_stage
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else float("inf")
        self.model.train()
        total = 0.0
        bar = tqdm(range(steps), desc=label, disable=not progress, file=sys.stderr,
                   leave=False, dynamic_ncols=True)  # fmt: skip
        for local in bar:
            step = stage * steps + local  # the update's index over the whole sequence
            self.optimizer.set_lr_factor(self.lr_factor(step))
            batch = domain.batches.batch(step)
            with self.autocast():
                logits, state = call_model(
                    self.model, batch.inputs.to(self.device), self.memory or None
                )  # [B, T, vocab]
            loss = language_model_loss(logits, batch.targets.to(self.device))
            if not torch.isfinite(loss):
                raise UserError(
                    f"continual: the loss became {loss.item()} at stage {stage + 1} "
                    f"({domain.label}), update {local + 1}; try a smaller --lr"
                )
            self.model.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.optimizer.parameters(), clip)
            self.optimizer.step()
            keep = getattr(self.model, "carried_over", None)
            if keep is not None and getattr(self.model, "continual", False):
                self.memory = {k: v.detach() for k, v in keep(state).items()}
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        return total / steps


def build_learner(spec: str, settings: ContinualSettings, device, overrides=()) -> tuple:
    """(Learner, ModelSource, effective optimizer settings) for `spec` resized by `settings`."""
    size = Resize(settings.d_model, settings.heads, settings.layers)
    plain = nestdsl.load(spec, overrides=list(overrides) or None)
    source = spec_source(spec, [*resize_overrides(plain.spec.dims, size), *overrides])
    source.check_vocab(VOCAB)
    levels = {lv: optimizer_settings(c) for lv, c in source.trained_levels().items()}
    primary = next(iter(levels))
    if settings.lr is not None:
        if len(levels) > 1:
            raise UserError(
                f"continual: --lr sets one rate, but {source.name} trains {len(levels)} levels "
                f"({', '.join(levels)}); set them with --set levels.<level>.optimizer.lr=..."
            )
        levels[primary]["lr"] = settings.lr
    seed_everything(settings.seed)
    model = source.build().to(device)
    optimizer = build_level_optimizers(model, levels, build_optimizer)
    return Learner(model, optimizer, settings, device), source, levels


def _identity(source, settings: ContinualSettings, domains: list[Domain]) -> dict:
    """What a checkpoint must match to be resumed: the spec, the settings and the texts."""
    return {
        "spec": source.identity(),
        "settings": {**asdict(settings), "domains": list(settings.domains)},
        "texts": [d.sha256 for d in domains],
    }


def run_continual(
    spec: str,
    settings: ContinualSettings = ContinualSettings(),
    device: torch.device | str = "cpu",
    overrides: list[str] = (),
    work_dir: str | Path | None = None,
    progress: bool = True,
    on_stage=None,
) -> dict:
    """Train `spec` through the domains in order, scoring every domain after each stage.

    `on_stage(stage, learner)` (optional) sees the learner after each stage is trained and
    scored (tests compare weights there). A JSON-able result; see the module docstring.
    """
    settings.check()
    device = torch.device(device)
    domains = load_domains(settings)
    learner, source, levels = build_learner(spec, settings, device, list(overrides))
    identity = _identity(source, settings, domains)
    # One folder per spec and settings, so other seeds or settings (as `nestdsl compare` runs
    # them) never collide, and the same command finds its own folder to resume.
    root = Path(work_dir or work_dir_for("continual", source.name, identity))
    stages = Checkpoints(root / "stages", identity, "continual", keep=len(domains))
    done: dict = {"baseline": None, "R": [], "train_loss": [], "seconds": []}
    saved = stages.load(learner.model, learner.optimizer)
    if saved is not None:
        if saved.memory:
            learner.memory = {k: v.to(device) for k, v in saved.memory.items()}
        done = {k: saved.state[k] for k in done}
        if progress:
            tqdm.write(f"continual: resuming {root} after stage {len(done['R'])}", file=sys.stderr)
    if done["baseline"] is None:
        done["baseline"] = evaluate_row(
            learner.model, domains, settings.batch_size, device, progress
        )
    for stage in range(len(done["R"]), len(domains)):
        domain = domains[stage]
        label = f"continual {source.name} {stage + 1}/{len(domains)} {domain.label}"
        started = time.perf_counter()
        loss = learner.train_stage(stage, domain, progress, label)
        row = evaluate_row(learner.model, domains, settings.batch_size, device, progress)
        done["R"].append(row)
        done["train_loss"].append(round(loss, 6))
        done["seconds"].append(round(time.perf_counter() - started, 2))
        stages.save((stage + 1) * settings.steps_per_stage, learner.model, learner.optimizer,
                    done, learner.memory or None)  # fmt: skip
        if progress:
            shown = ", ".join(f"{d.label} {b:.3f}" for d, b in zip(domains, row, strict=True))
            tqdm.write(f"{label}: bpb {shown}", file=sys.stderr)
        if on_stage is not None:
            on_stage(stage, learner)
    labels = [d.label for d in domains]
    plot = root / "continual.png"
    plot_continual(done["R"], done["baseline"], labels, plot, title=f"{source.name}: continual")
    return {
        "task": "continual",
        "spec": source.name,
        "subject": spec,
        "protocol": "sequential training over the domains with one optimizer; after each "
        "stage every domain's held-out bits per byte (bpb protocol); R[i][j] = bpb on domain j "
        "after stage i; BWT negative = forgetting (Lopez-Paz & Ranzato 2017, bpb sign); "
        "forgetting per domain (Chaudhry et al. 2018)",
        "settings": {
            **asdict(settings),
            "domains": list(settings.domains),
            "optimizers": levels,
            "overrides": list(overrides),
            "device": str(device),
        },  # fmt: skip
        "parameters": sum(p.numel() for p in learner.model.parameters()),
        "domains": labels,
        "baseline": done["baseline"],
        "R": done["R"],
        **summarize(done["R"], done["baseline"]),
        "train_loss": done["train_loss"],
        "seconds_per_stage": done["seconds"],
        "plot": str(plot),
        "work_dir": str(root),
    }


# `nestdsl eval --task continual` (nestdsl/commands/eval.py reads FLAGS, run_cli, summary;
# nestdsl compare reads SUBJECT and COMPARE_METRICS).
SUBJECT = "spec"  # trains from scratch: compare hands it the spec, not its trained run
COMPARE_METRICS = {
    "final bpb": ("average_final_bpb", "lower"),
    "BWT": ("backward_transfer", "higher"),
    "forgetting": ("average_forgetting", "lower"),
}
_NUMBERS = {"steps_per_stage": int, "batch_size": int, "seq_len": int, "lr": float,
            "max_bytes": int, "d_model": int, "heads": int, "layers": int}  # fmt: skip
FLAGS = {
    "domains": {
        "metavar": "A,B,...",
        "help": f"domains in training order, embedded names or files (default "
        f"{','.join(DEFAULT_DOMAINS)})",
    },
    "work_dir": {
        "metavar": "DIR",
        "help": "stage checkpoints and the plot (default runs/eval/<spec>-continual-<hash>); "
        "the same command again resumes there",
    },
    **{
        name: {"type": kind, "metavar": "X",
               "help": f"default {getattr(ContinualSettings(), name) or 'the spec'}"}
        for name, kind in _NUMBERS.items()
    },
}  # fmt: skip


def run_cli(subject: str, given: dict, context) -> dict:
    if context.run_folder:
        raise UserError(
            "continual trains from scratch through the domains: give a spec (name or file), "
            "not a run folder"
        )
    work_dir = given.pop("work_dir", None)
    if "domains" in given:
        given["domains"] = tuple(d.strip() for d in given["domains"].split(",") if d.strip())
    settings = dataclasses.replace(ContinualSettings(seed=context.seed), **given)
    return run_continual(
        subject, settings, context.device, context.overrides, work_dir, context.progress
    )


def summary(result: dict) -> str:
    labels = result["domains"]
    width = max(11, *(len(x) + 1 for x in labels))
    lines = [
        f"{result['spec']}: continual, {result['settings']['steps_per_stage']} updates per "
        "domain; held-out bits per byte (rows: after training on; columns: scored on)",
        f"{'':<14}" + "".join(f"{x:>{width}}" for x in labels),
        f"{'untrained':<14}" + "".join(f"{b:>{width}.3f}" for b in result["baseline"]),
    ]
    for label, row in zip(labels, result["R"], strict=True):
        lines.append(f"{label:<14}" + "".join(f"{b:>{width}.3f}" for b in row))
    forgetting = ", ".join(
        f"{x} {f:+.3f}" for x, f in zip(labels, result["forgetting"], strict=False)
    )
    lines += [
        f"average final bpb {result['average_final_bpb']:.4f}",
        f"backward transfer {result['backward_transfer']:+.4f} bpb (negative: forgetting)"
        if result["backward_transfer"] is not None else "backward transfer: one domain, none",
        f"forgetting (bpb rise from the best earlier value): {forgetting or 'none'}",
        f"plot: {result['plot']}",
    ]  # fmt: skip
    return "\n".join(lines)
