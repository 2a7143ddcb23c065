"""Training a fresh model on generated rows: the loop that `recall` and `needle` share.

Both tasks train from scratch on rows a generator draws per step (seeded by the step), scored
only where the labels are not `IGNORE`: AdamW, a one-cycle schedule (Smith & Topin 2019, as
Zoology trains MQAR), gradient-norm clipping. The loop records a loss curve and stops at the
first non-finite loss or gradient norm, before an update that would spoil the weights, so the
model that is scored is the last finite one. Beside the loss, each curve record keeps the
largest gradient norm and the largest entry of the in-context memory state since the previous
record: a memory that blows up shows there long before the loss does (docs/evaluation.md).

Given `Checkpoints` (checkpoints.py), the loop saves its whole state at every curve record
(weights, optimizer, schedule, curve, random state) and starts from the latest one it finds,
so an interrupted run resumes at its last record and ends with the numbers an uninterrupted
one would have had.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nestdsl.eval.checkpoints import Checkpoints, work_dir_for
from nestdsl.eval.mqar import IGNORE
from nestdsl.optim import build_optimizer, undecayed_of

Rows = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step -> (inputs, labels) [B, L]


def one_cycle(step: int, steps: int, warmup_fraction: float) -> float:
    """The lr multiplier at `step`: one-cycle (Smith & Topin 2019, torch's OneCycleLR shape).

    Linear from 1/25 to 1 over the first `warmup_fraction` of the steps (at least one), then a
    cosine from 1 down to 1/25e4 at the last step.
    """
    start, end = 1 / 25, 1 / 25e4
    warm = max(1, round(warmup_fraction * steps))
    if step < warm:
        return start + (1 - start) * step / warm
    done = (step - warm) / max(1, steps - 1 - warm)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled positions only, in float32."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )


def state_max(state: dict, memories: set[str]) -> float:
    """The largest |entry| of the memories' returned state (keys `layer.<i>.<memory>.<part>`),
    leaving out what other ops carry (short-convolution buffers); 0 when there is none."""
    peaks = [
        t.detach().abs().max().item()
        for key, t in state.items()
        if t.is_floating_point() and t.numel() and memories & set(key.split("."))
    ]
    return max(peaks, default=0.0)


def default_work_dir(task: str, subject: str, settings, context) -> Path:
    """`<spec>-<task>-<hash>` beside `--out` (or in runs/eval), hashed over the spec, the
    settings and the overrides."""
    key = {"spec": subject, "settings": asdict(settings), "overrides": list(context.overrides)}
    parent = Path(context.out).parent if context.out else Path("runs/eval")
    return work_dir_for(task, Path(subject).stem, key, parent)


WORK_DIR_FLAG = {
    "metavar": "DIR",
    "help": "checkpoints (default <spec>-<task>-<hash> beside --out, or in runs/eval); the same "
    "command again resumes there",
}


def train_on_rows(
    model: torch.nn.Module,
    rows: Rows,
    settings,
    device: torch.device,
    *,
    memories: set[str],
    desc: str,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Train `model` for `settings.steps` updates on `rows(step)`; its training record.

    `settings` has steps, lr, weight_decay, warmup_fraction, grad_clip (0: off) and log_every.
    `on_record` (optional) sees every curve record as it is made, e.g. to watch a long run.
    `checkpoints` (optional): save at every record and resume from the latest save.
    """
    model.train()
    optimizer = build_optimizer(
        model.named_parameters(),
        {"kind": "adamw", "lr": settings.lr, "weight_decay": settings.weight_decay},
        undecayed_of(model),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: one_cycle(step, settings.steps, settings.warmup_fraction)
    )
    clip = settings.grad_clip if settings.grad_clip > 0 else float("inf")
    saved = None if checkpoints is None else checkpoints.load(model, optimizer)
    start, curve = 0, []
    if saved is not None:
        schedule.load_state_dict(saved.state["schedule"])
        start, curve = saved.step, saved.state["curve"]
    if start:  # said as records are, with or without progress bars
        tqdm.write(f"{desc}: resuming at step {start} from {checkpoints.root}", file=sys.stderr)
    window, diverged, last_loss = [], None, float("nan")
    peak_grad = peak_state = 0.0  # the largest gradient norm and state entry since the last record

    def record(entry: dict) -> None:
        curve.append(entry)
        if on_record is not None:
            on_record(entry)

    bar = tqdm(range(start, settings.steps), desc=desc, disable=not progress, file=sys.stderr,
               leave=False, dynamic_ncols=True, initial=start, total=settings.steps)  # fmt: skip
    for step in bar:
        inputs, labels = rows(step)
        logits, state = model(inputs.to(device))  # [B, L, vocab]
        loss = label_loss(logits, labels.to(device))
        state_now = state_max(state, memories)
        peak_state = max(peak_state, state_now)
        if not torch.isfinite(loss):
            diverged = {"step": step, "in": "loss"}
            record({"step": step, "loss": None, "state_max": state_now})
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        if not math.isfinite(grad_norm):
            # An infinite norm would make clipping scale every gradient to NaN: stop before the
            # update, so the scored model is the last finite one.
            diverged = {"step": step, "in": "gradient"}
            record({"step": step, "loss": round(loss.item(), 5), "grad_norm": grad_norm,
                    "state_max": state_now})  # fmt: skip
            break
        peak_grad = max(peak_grad, grad_norm)
        optimizer.step()
        window.append(loss.item())
        recorded = (step + 1) % settings.log_every == 0 or step + 1 == settings.steps
        if recorded:
            last_loss = sum(window) / len(window)
            record({
                "step": step + 1, "loss": round(last_loss, 5), "lr": schedule.get_last_lr()[0],
                "grad_norm": round(peak_grad, 5), "state_max": round(peak_state, 5),
            })  # fmt: skip
            bar.set_postfix(loss=f"{last_loss:.3f}")
            window, peak_grad, peak_state = [], 0.0, 0.0
        schedule.step()
        if checkpoints is not None and recorded and step + 1 < settings.steps:
            # LambdaLR keeps None for a plain function's lambda: its state is JSON as it is
            checkpoints.save(step + 1, model, optimizer,
                             {"curve": curve, "schedule": schedule.state_dict()})  # fmt: skip
    bar.close()
    return {
        "final_train_loss": None if diverged is not None else round(last_loss, 5),
        "diverged_at": None if diverged is None else diverged["step"],
        "diverged_in": None if diverged is None else diverged["in"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "curve": curve,
    }
