"""The training loop: language modelling of a compiled model on text, resumable exactly.

`train(source, config, out_dir)` trains `source.build()` on a text corpus, read as bytes or as
the tokens of a BPE trained on its training part (`config.tokenizer`), with one optimizer per
trained (`every: step`) level of the spec, each over the parameters the model assigns to that
level, under one warmup-cosine schedule and one gradient clip; evaluates on held-out text; logs
to metrics.jsonl, loss.png (and TensorBoard), with bits per byte beside every loss so that
tokenizers compare; checkpoints atomically, also when Ctrl-C or
SIGTERM stops it. It runs unchanged as one process or as
one rank of a torchrun job (DistributedDataParallel; rank 0 alone writes files).

Why a resumed run repeats an uninterrupted one exactly (on the CPU): batches are a pure function
of the step, the schedule is a pure function of the step, and a checkpoint restores weights,
optimizer state, every random generator, the carried in-context memory and the loss-averaging
window bit for bit. Evaluation consumes no randomness.

The model contract: `logits, state = model(tokens, state=None)` with tokens `[B, T]` int64,
logits `[B, T, V]` (V the tokenizer's vocabulary, 256 for bytes), `state` a flat dict of
tensors (in-context memories).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from nestdsl.data.batches import ByteBatches
from nestdsl.data.corpus import corpus_fingerprint, load_corpus, split_corpus
from nestdsl.data.tokenizer import BYTES, Tokenizer, train_tokenizer, vocab_of
from nestdsl.errors import UserError
from nestdsl.optim import build_level_optimizers, build_optimizer, optimizer_settings
from nestdsl.train import distributed
from nestdsl.train.checkpoint import (
    load_checkpoint,
    read_meta,
    remove_leftovers,
    save_checkpoint,
)
from nestdsl.train.config import ModelSource, TrainConfig, TrainingInterrupted, TrainResult
from nestdsl.train.counters import LoopCounters
from nestdsl.train.distributed import capture_rng, restore_rng, seed_everything
from nestdsl.train.folder import RunFolder
from nestdsl.train.init_from import init_from
from nestdsl.train.metrics import (
    MetricsLog,
    TensorBoardLog,
    bits_per_byte,
    call_model,
    language_model_loss,
    plot_losses,
)
from nestdsl.train.optimizer_state import saved_group_sizes
from nestdsl.train.schedule import WarmupCosine
from nestdsl.train.signals import StopRequest, stop_on_signals


def train(
    source: ModelSource,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    corpus: bytes | None = None,
    progress: bool = True,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train `source` with `config`, writing the run folder `out_dir`; see the module docstring.

    `corpus` overrides `config.data` (tests pass small texts). `stop` lets the caller stop the
    run from another thread (`stop.time_up()`, a time limit): the loop checkpoints the step it
    is in and raises TrainingInterrupted, as on Ctrl-C. Under torchrun every rank calls this;
    the returned result is complete on every rank. Raises UserError for user-caused problems
    and TrainingInterrupted on Ctrl-C.
    """
    context = distributed.setup(config.device)
    trainer = _Trainer(source, config, Path(out_dir), context, resume, corpus, progress)
    result = trainer.run(stop)
    distributed.teardown(context)
    return result


class _Trainer:
    def __init__(self, source, config, out_dir, context, resume, corpus, progress) -> None:
        self.source: ModelSource = source
        self.context: distributed.ProcessContext = context
        self.folder = RunFolder(out_dir)
        self.resume = resume
        self.progress = progress and context.is_main
        # Before anything is read or written: a vocabulary the tokens do not fit cannot train.
        source.check_vocab(vocab_of(config.tokenizer), config.tokenizer)
        if resume and config.schedule_steps is None:  # a resumed run keeps its schedule
            config = dataclasses.replace(config, schedule_steps=self.folder.schedule_steps())
        text = corpus if corpus is not None else load_corpus(config.data)
        self.split = split_corpus(text, config.val_fraction)
        levels = {lv: optimizer_settings(c) for lv, c in source.trained_levels().items()}
        primary = next(iter(levels))
        if config.lr is not None and len(levels) > 1 and config.lr != levels[primary]["lr"]:
            raise UserError(
                f"--lr sets one peak rate, but {source.name} trains {len(levels)} levels "
                f"({', '.join(levels)}) with their own; set one with "
                f"--set levels.{primary}.optimizer.lr={config.lr}"
            )
        self.config: TrainConfig = config.resolved(levels[primary]["lr"])
        levels[primary]["lr"] = self.config.lr
        self.optimizer_configs = levels
        self.schedule = WarmupCosine(
            self.config.lr,
            self.config.warmup_steps,
            self.config.schedule_steps,
            self.config.min_lr_ratio,
        )
        self.record = {
            "data": {
                "name": config.data or "shakespeare",
                "sha256": corpus_fingerprint(text),
                "bytes": len(text),
            },
            "optimizer": levels[primary],
            "optimizers": levels,
            "schedule": self.schedule.as_dict(),
            "world_size": context.world_size,
        }
        self.device = context.device
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if self.device.type == "cuda"
            else contextlib.nullcontext
        )
        self.counters = LoopCounters()  # a checkpoint restores them: the log continues identically
        self.memory: dict[str, torch.Tensor] | None = None
        self.tokenizer: Tokenizer | None = None  # trained or read in _prepare_folder
        self.last_checkpoint: Path | None = None
        self.step = 0
        self.elapsed_before = 0.0  # seconds trained before this session (a resumed run)
        self.checkpointed_step = -1

    # ------------------------------------------------------------------ setup

    def _on_main(self, action) -> None:
        """Run `action` (file writing) on rank 0 only; every rank stops if it fails."""
        error: BaseException | None = None
        if self.context.is_main:
            try:
                action()
            except Exception as err:  # noqa: BLE001 - re-raised below after telling the other ranks
                error = err
        if not self.context.all_ok(error is None):
            if error is not None:
                raise error
            raise UserError("stopped because rank 0 failed (see its message)")

    def _prepare_folder(self) -> None:
        if not self.resume:  # every rank trains the same tokenizer: training is deterministic
            self._on_main(self.folder.check_new)  # a refusal need not wait for the training
            self._use_tokenizer(train_tokenizer(self.config.tokenizer, self.split.train))

        def prepare() -> None:
            if self.resume:
                saved = self.folder.check_resume(self.source, self.config, self.record)
                if "init_from" in saved:  # what the run started from stays on record
                    self.record["init_from"] = saved["init_from"]
                self._use_tokenizer(self.folder.read_tokenizer())
                remove_leftovers(self.folder.checkpoints)
                self.folder.update_config(self.source, self.config, self.record)
            else:
                self.folder.start(self.source, self.config, self.record, self.tokenizer)

        self._on_main(prepare)
        if self.tokenizer is None:  # another rank of a resumed run: rank 0 checked the folder
            self._use_tokenizer(self.folder.read_tokenizer())

    def _use_tokenizer(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.token_bytes = tokenizer.token_bytes  # [V] bytes each token id stands for
        self.record["tokenizer"] = {"name": tokenizer.name, "vocab": tokenizer.vocab_size}
        if tokenizer.sha256 is not None:
            self.record["tokenizer"]["sha256"] = tokenizer.sha256

    def _build(self) -> None:
        seed_everything(self.config.seed)
        model = self.source.build()
        if not isinstance(model, torch.nn.Module):
            raise UserError(
                f"building {self.source.name!r} gave {type(model).__name__}, not a torch module"
            )
        self.model = model.to(self.device)
        self.model.train()
        if hasattr(self.model, "recompute"):  # a compiled spec (a user's module need not be)
            try:
                self.model.recompute = self.config.recompute
            except ValueError as err:
                raise UserError(f"--recompute {self.config.recompute}: {err}") from None
        self.optimizer = build_level_optimizers(self.model, self.optimizer_configs, build_optimizer)
        if self.context.rank > 0:
            # Ranks share the initial weights but should not share dropout masks.
            seed_everything(self.config.seed + 7919 * self.context.rank)

    def _restore(self) -> None:
        path = self.folder.latest_checkpoint()
        if path is None:
            raise UserError(f"nothing to resume: {self.folder.root} has no checkpoint")
        self._keep_saved_grouping(path)
        loaded = load_checkpoint(path, self.model, self.optimizer)
        spec = loaded.meta.get("spec", {})
        if spec != self.source.identity():
            raise UserError(
                f"checkpoint {path} was written for spec {spec.get('name')!r} with other text "
                f"or overrides than the spec {self.source.name!r} given now"
            )
        loop = loaded.meta["loop"]
        self.step = loaded.step
        self.counters = LoopCounters.from_dict(loop, self.config.batch_size * self.config.seq_len)
        self.elapsed_before = float(loop.get("elapsed_s", 0.0))
        self.last_checkpoint = path
        self.checkpointed_step = loaded.step
        rank = self.context.rank
        if len(loaded.rng_states) == self.context.world_size:
            restore_rng(loaded.rng_states[rank])
        else:  # another number of processes: data is still identical, dropout masks are not
            seed_everything(self.config.seed + 7919 * rank + loaded.step)
        if loaded.memory_states is not None and self._carries():
            self.memory = {k: v.to(self.device) for k, v in loaded.memory_states[rank].items()}
        self._say(f"resuming {self.folder.root} from step {loaded.step}")

    def _keep_saved_grouping(self, path: Path) -> None:
        """A run checkpointed before normed memories' initial states left weight decay
        (session 9, nestdsl.optim) resumes as it was trained: with them decayed."""
        saved = saved_group_sizes(read_meta(path))
        if not saved or saved == self.optimizer.group_sizes():
            return
        before = build_level_optimizers(self.model, self.optimizer_configs, build_optimizer, set())
        if saved == before.group_sizes():
            self.optimizer = before
            self._say(f"{path} predates the undecayed initial states of normed memories: the run "
                      "keeps decaying them (start a new run with --init-from to change that)")  # fmt: skip

    def _init_from(self) -> None:
        """Step 0's weights from another run (NL §7.3, init_from.py); recorded in config.json."""
        report = init_from(
            self.model, self.config.init_from, self.config.init_map, self.record.get("tokenizer")
        )
        self.record["init_from"] = report.record()
        self._on_main(lambda: self.folder.update_config(self.source, self.config, self.record))
        if self.context.is_main:
            tqdm.write(report.summary(), file=sys.stderr)

    # ------------------------------------------------------------------ one update, one evaluation

    def _carries(self) -> bool:
        """Whether a step's final state matters to the next: a stream (`--carry-state`), or a
        model that keeps memories across sequences (`reset: never`)."""
        return self.config.carry_state or bool(getattr(self.model, "continual", False))

    def _carried(self, fresh: bool) -> dict | None:
        """The state a step starts from: all of the last one inside a stream; at a new
        sequence, what the model keeps across sequences (none for most models)."""
        if self.memory is None:
            return None
        if self.config.carry_state and not fresh:
            return self.memory
        keep = getattr(self.model, "carried_over", None)
        return (keep(self.memory) or None) if keep is not None else None

    def _train_step(
        self, model, batches: ByteBatches, step: int, stop: StopRequest
    ) -> tuple[float, float, bool, float]:
        """One update; returns the mean loss, the gradient norm before clipping, whether any
        process was asked to stop (agreed by all, so every rank stops at the same step), and the
        bytes of text the global batch's targets cover."""
        self.optimizer.set_lr_factor(self.schedule.factor_at(step))
        batch = batches.batch(step)
        inputs = batch.inputs.to(self.device, non_blocking=True)
        targets = batch.targets.to(self.device, non_blocking=True)
        carried = self._carried(batch.fresh_state)
        with self.autocast():
            logits, state = call_model(model, inputs, carried, self.tokenizer.vocab_size)
        loss = language_model_loss(logits, targets)
        # Frozen (`every: never`) parameters get gradients too; clearing the model's keeps them
        # from piling up. The clip and the logged norm cover the trained parameters.
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.optimizer.parameters(), clip))
        self.optimizer.step()
        if self._carries():
            # Truncated backpropagation through time: the next step starts from this state.
            self.memory = {k: v.detach() for k, v in state.items()}
        # Every rank has the same number of rows, so the mean of rank means is the global mean.
        # Read after the update, so a signal that arrived during it stops the run right here.
        covered = float(self.token_bytes[batch.targets].sum())
        total, stops, covered = self.context.all_reduce_sum(
            [loss.item(), float(stop.requested), covered]
        )
        return total / self.context.world_size, grad_norm, stops > 0, covered

    @torch.no_grad()
    def evaluate(self, batches: ByteBatches) -> tuple[float, float]:
        """Validation over the same fixed batches every time, fresh memories each: the mean
        loss in nats per token and bits per byte (all nats / all bytes covered / ln 2)."""
        self.model.eval()
        total, count, covered = 0.0, 0, 0
        for index in range(self.config.eval_batches):
            batch = batches.batch(index)
            with self.autocast():
                logits, _ = call_model(
                    self.model, batch.inputs.to(self.device), None, self.tokenizer.vocab_size
                )
            total += language_model_loss(
                logits, batch.targets.to(self.device), reduction="sum"
            ).item()
            count += batch.targets.numel()
            covered += int(self.token_bytes[batch.targets].sum())
        self.model.train()
        total, count, covered = self.context.all_reduce_sum([total, float(count), float(covered)])
        return total / count, bits_per_byte(total / count, covered / count)

    # ------------------------------------------------------------------ checkpoints and logs

    def _checkpoint(self, step: int) -> None:
        rng_states = self.context.gather_to_main(capture_rng())
        memory = None
        if self._carries():
            own = {k: v.detach().cpu() for k, v in (self.memory or {}).items()}
            memory = self.context.gather_to_main(own)
        extra = {
            "spec": self.source.identity(),
            "loop": {**self.counters.as_dict(), "elapsed_s": self._elapsed()},
            "data": {
                "next_step": step,
                "carry_state": self.config.carry_state,
                **self.record["data"],
            },
            "schedule": self.schedule.as_dict(),
        }

        def write() -> None:
            self.metrics.sync()
            self.last_checkpoint = save_checkpoint(
                self.folder.checkpoints,
                step=step,
                model=self.model,
                optimizer=self.optimizer,
                rng_states=rng_states,
                memory_states=memory,
                extra=extra,
                keep=self.config.keep_checkpoints,
            )

        self._on_main(write)
        self.checkpointed_step = step
        if not self.context.is_main:
            self.last_checkpoint = self.folder.checkpoints / f"step-{step:08d}"

    def _elapsed(self) -> float:
        """Training seconds of the whole run, across resumes."""
        return round(self.elapsed_before + time.perf_counter() - self.session_started, 3)

    def _say(self, message: str) -> None:
        if self.progress:
            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------ the run

    def run(self, stop: StopRequest | None = None) -> TrainResult:
        """Train to `config.steps`; `stop` (see `train`) is also set by SIGINT and SIGTERM."""
        self._build()  # a model or optimizer that cannot be built leaves no run folder behind
        self._prepare_folder()
        if self.resume:
            self._restore()  # a run started --init-from resumes its own weights, never RUN's
        elif self.config.init_from is not None:
            self._init_from()
        cfg, context = self.config, self.context
        self.session_started = time.perf_counter()
        self.metrics = MetricsLog(self.folder.metrics, enabled=context.is_main)
        self.board = TensorBoardLog(
            self.folder.root / "tensorboard", enabled=context.is_main and cfg.log == "tensorboard"
        )
        if self.resume:
            self._on_main(lambda: self.metrics.truncate_after(self.step))
            self._on_main(lambda: self.board.truncate_after(self.step))
        unit = "bytes" if self.tokenizer.name == BYTES else "tokens"
        common = dict(
            batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed, rank=context.rank,
            world_size=context.world_size, unit=unit,
        )  # fmt: skip
        train_batches = ByteBatches(
            self.tokenizer.encode(self.split.train),
            split="train",
            contiguous=cfg.carry_state,
            **common,
        )
        val_batches = ByteBatches(
            self.tokenizer.encode(self.split.validation), split="val", **common
        )
        model = self.model
        if context.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            static = getattr(self.model, "reenters_backward", False)  # see CompiledModel
            model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids, static_graph=static
            )
        if self.step >= cfg.steps:
            self._say(
                f"{self.folder.root} already reached step {self.step}; pass a larger --steps to continue"
            )
            self.counters.set_validation(*self.evaluate(val_batches))
            self.metrics.close()
            self.board.close()
            return self._result()
        if self.resume:
            marker = {"kind": "resume", "step": self.step, "elapsed_s": self._elapsed()}
            self._on_main(lambda: self.metrics.append(marker))
            if cfg.steps > cfg.schedule_steps:
                self._say(
                    f"steps {max(self.step, cfg.schedule_steps) + 1}-{cfg.steps} run past the "
                    f"schedule's end ({cfg.schedule_steps}) at its floor rate "
                    f"{self.schedule.lr_at(cfg.schedule_steps):.3g}"
                )

        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=self.source.name,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        tokens_per_step = cfg.batch_size * cfg.seq_len
        first_step = self.step
        started = window_started = time.perf_counter()
        try:
            with stop_on_signals(stop) as stop:
                if self.step == 0:
                    self.counters.set_validation(*self.evaluate(val_batches))
                    record0 = self._val_record(0)
                    self._on_main(lambda: self._write_logs([record0], False))
                for step in range(self.step, cfg.steps):
                    loss, grad_norm, stopping, covered = self._train_step(
                        model, train_batches, step, stop
                    )
                    if not math.isfinite(loss):
                        raise UserError(
                            f"the loss became {loss} at step {step + 1}; try a smaller --lr"
                        )
                    self.step = done = step + 1
                    self.counters.add(loss, covered)
                    now = time.perf_counter()
                    bar.update(1)
                    session_rate = tokens_per_step * (done - first_step) / max(now - started, 1e-9)
                    bar.set_postfix_str(
                        f"loss {loss:.3f}, {session_rate:,.0f} tok/s", refresh=False
                    )
                    records = []
                    if done % cfg.log_every == 0 or done == cfg.steps:
                        steps = self.counters.window_steps
                        tokens_per_s = steps * tokens_per_step / max(now - window_started, 1e-9)
                        records.append({
                            "kind": "train", "step": done,
                            "loss": self.counters.close_window(tokens_per_step),
                            "bpb": self.counters.last_train_bpb, "lr": self.schedule.lr_at(step),
                            "grad_norm": grad_norm, "tokens_per_s": round(tokens_per_s, 1),
                            "elapsed_s": self._elapsed(),
                        })  # fmt: skip
                        window_started = now
                    evaluated = done % cfg.eval_every == 0 or done == cfg.steps
                    if evaluated:
                        self.counters.set_validation(*self.evaluate(val_batches))
                        records.append(self._val_record(done))
                    if records:
                        self._on_main(
                            lambda records=records, plot=evaluated: self._write_logs(records, plot)
                        )
                    if done % cfg.ckpt_every == 0 or done == cfg.steps or stopping:
                        self._checkpoint(done)
                    if stopping:
                        self._on_main(lambda: self._plot())
                        raise TrainingInterrupted(
                            self._interrupted_message(), signal=stop.signal or 2
                        )
        except KeyboardInterrupt:
            bar.close()
            raise TrainingInterrupted(self._interrupted_message()) from None
        finally:
            bar.close()
            self.metrics.close()
            self.board.close()
        return self._result()

    def _val_record(self, step: int) -> dict:
        c = self.counters
        return {"kind": "val", "step": step, "loss": c.last_val_loss, "bpb": c.last_val_bpb}

    def _write_logs(self, records: list[dict], plot: bool) -> None:
        for record in records:
            self.metrics.append(record)
            self.board.append(record)
        if plot:
            self._plot()

    def _plot(self) -> None:
        per_byte = self.tokenizer.name != BYTES
        plot_losses(self.metrics.records, self.folder.plot, self.source.name, per_byte)

    def _interrupted_message(self) -> str:
        if self.last_checkpoint is None:
            return f"interrupted at step {self.step} before any checkpoint was written; rerun to start again"
        if self.checkpointed_step == self.step:
            return (
                f"stopped at step {self.step} and saved it: {self.last_checkpoint}; "
                "rerun the same command with --resume to continue"
            )
        return (
            f"interrupted at step {self.step}; the last checkpoint is {self.last_checkpoint}; "
            "rerun the same command with --resume to continue from it"
        )

    def _result(self) -> TrainResult:
        return TrainResult(
            run_dir=self.folder.root,
            plot=self.folder.plot,
            checkpoint=self.last_checkpoint,
            step=self.step,
            train_loss=self.counters.last_train_loss,
            val_loss=self.counters.last_val_loss,
            is_main=self.context.is_main,
            train_bpb=self.counters.last_train_bpb,
            val_bpb=self.counters.last_val_bpb,
        )
