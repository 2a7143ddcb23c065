"""What an evaluation runs on: a spec resized for a synthetic task, or a trained run folder.

Two kinds of subject, named by one command-line argument (`RUN_OR_SPEC`):

* a **run folder** (`nestdsl train` wrote it: spec.yaml, config.json, checkpoints/): text
  tasks (`bpb`) load it with `nestdsl.load_run` (its own spec copy and overrides, the latest
  checkpoint) and score it as trained;
* a **spec** (a shipped name or a YAML file): tasks that train from scratch (`recall`) build a
  fresh model per grid point, resized with `--set`-style overrides (`dims.d_model=64`, ...), the
  same path a user takes with `nestdsl train SPEC --set ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nestdsl
from nestdsl.errors import UserError


@dataclass(frozen=True)
class Resize:
    """A model size for a from-scratch task; `None` keeps the spec's own value."""

    d_model: int | None = None
    heads: int | None = None
    layers: int | None = None
    vocab: int | None = None


def resize_overrides(dims: dict, size: Resize) -> list[str]:
    """`--set` overrides giving a spec's dims the requested size.

    d_head follows as d_model / heads, and d_ff keeps its ratio to d_model (the shipped
    SwiGLU ratio 2.75 gives 176 at d_model 64), so a resized spec keeps its shape.
    """
    out = []
    d_model = size.d_model or dims.get("d_model")
    heads = size.heads or dims.get("n_heads")
    if size.d_model is not None:
        if "d_model" not in dims:
            raise UserError("this spec has no `dims.d_model` to resize")
        out.append(f"dims.d_model={d_model}")
        if "d_ff" in dims and isinstance(dims["d_ff"], int):
            ratio = dims["d_ff"] / dims["d_model"]
            out.append(f"dims.d_ff={max(1, round(ratio * d_model))}")
    if size.heads is not None:
        if "n_heads" not in dims:
            raise UserError("this spec has no `dims.n_heads` to resize")
        out.append(f"dims.n_heads={heads}")
    if (size.d_model is not None or size.heads is not None) and "d_head" in dims:
        if d_model % heads:
            raise UserError(f"d_model {d_model} is not divisible by {heads} heads")
        out.append(f"dims.d_head={d_model // heads}")
    if size.layers is not None:
        if "n_layers" not in dims:
            raise UserError("this spec has no `dims.n_layers` to resize")
        out.append(f"dims.n_layers={size.layers}")
    if size.vocab is not None:
        if "vocab" not in dims:
            raise UserError("this spec has no `dims.vocab` to resize")
        out.append(f"dims.vocab={size.vocab}")
    return out


def load_resized(spec: str, size: Resize, extra: list[str] = ()) -> nestdsl.CheckedSpec:
    """The spec `spec` checked with the resize overrides, then the user's own `--set` ones."""
    plain = nestdsl.load(spec, overrides=list(extra) or None)
    return nestdsl.load(spec, overrides=[*resize_overrides(plain.spec.dims, size), *extra])


def is_run_folder(path: str) -> bool:
    root = Path(path)
    return root.is_dir() and (root / "config.json").is_file() and (root / "spec.yaml").is_file()


@dataclass(frozen=True)
class EvalContext:
    """What every task run from `nestdsl eval` shares: device, `--set` overrides, seed, bars."""

    device: object  # torch.device
    overrides: list[str]
    seed: int = 0
    progress: bool = True
    run_folder: bool = False  # the subject is a run folder, not a spec
    out: str | None = None  # the result JSON's path when given; figures go beside it


@dataclass(frozen=True)
class Scored:
    """A model a text task scores, with what a run folder says about its data (None for a spec:
    the task's defaults apply)."""

    model: object  # the compiled model, on the task's device
    name: str
    step: int  # the training steps it had (0 for a spec)
    data: str | None  # the run's corpus argument
    val_fraction: float
    seq_len: int | None  # the run's training window
    tokenizer: object  # nestdsl.data.tokenizer.Tokenizer


def load_scored(subject: str, device, overrides: list[str], seed: int, task: str) -> Scored:
    """A run folder at its latest checkpoint, or a spec compiled with its seeded initial
    weights (an untrained baseline); `--set` only changes a spec."""
    import torch

    from nestdsl.data.corpus import VALIDATION_FRACTION
    from nestdsl.data.tokenizer import ByteTokenizer

    if is_run_folder(subject):
        if overrides:
            raise UserError(
                f"{task}: --set changes a spec; a run folder is evaluated as it was trained"
            )
        run = nestdsl.load_run(subject, device)
        config = run.config
        return Scored(run.model, run.spec.name, run.state["step"], config.data,
                      config.val_fraction, config.seq_len, run.tokenizer)  # fmt: skip
    checked = nestdsl.load(subject, overrides=list(overrides) or None)
    torch.manual_seed(seed)
    model = nestdsl.compile(checked).to(device)
    return Scored(model, checked.name, 0, None, VALIDATION_FRACTION, None, ByteTokenizer())
