"""`nestdsl train SPEC`: train a spec on text, with checkpoints, metrics and a loss plot.

The text is read as bytes, or (`--tokenizer bpe:N`) as the tokens of a byte-level BPE trained
on its training part and saved in the run folder; the spec's vocabulary follows the tokenizer
(a `dims.vocab=N` override, shown before training and recorded with the run's overrides).

Flags left out keep their defaults on a new run and the run's saved values on `--resume`
(which refuses changes that would alter the run's trajectory); `--resume` also reuses the run's
`--set` overrides, so they need not be repeated. `--init-from RUN` starts a new run from another
run's weights (NL §7.3; nestdsl/train/init_from.py). Ctrl-C or SIGTERM checkpoints the step reached
and exits with 130 or 143. Under
`torchrun --nproc_per_node N -m nestdsl train ...` every process runs this command; rank 0
alone writes files and prints the summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nestdsl.commands.show import summary
from nestdsl.data.corpus import corpus_argument
from nestdsl.data.tokenizer import BYTES
from nestdsl.errors import UserError
from nestdsl.train.config import LOG_CHOICES, TrainConfig, TrainingInterrupted, spec_source
from nestdsl.train.distributed import DEVICE_CHOICES
from nestdsl.train.folder import resume_config, resume_overrides
from nestdsl.train.loop import train

HELP = "train a spec as a language model on bytes or BPE tokens (Shakespeare by default)"
EXAMPLE = "nestdsl train transformer --steps 300 --out runs/transformer"

# (flag destination, TrainConfig field) for every setting the command line can give.
SETTINGS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "seq_len": "seq_len",
    "lr": "lr",
    "warmup": "warmup_steps",
    "grad_clip": "grad_clip",
    "eval_every": "eval_every",
    "ckpt_every": "ckpt_every",
    "keep_checkpoints": "keep_checkpoints",
    "seed": "seed",
    "device": "device",
    "carry_state": "carry_state",
    "recompute": "recompute",
    "data": "data",
    "log": "log",
    "tokenizer": "tokenizer",
    "init_from": "init_from",
    "init_map": "init_map",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument(
        "spec", metavar="SPEC", help="a shipped spec name (e.g. hope) or a spec file"
    )
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="text file to train on (.gz ok) or an embedded corpus: shakespeare (default), kjv, "
        "milton, jargon",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="NAME",
        help="bytes (default), or bpe:N: a byte-level BPE of N tokens trained on the training "
        "text and saved in the run folder; the spec's vocabulary follows it",
    )
    parser.add_argument(
        "--steps", type=int, metavar="N", help=f"optimizer updates (default {defaults.steps})"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help=f"global batch, split over processes (default {defaults.batch_size})",
    )
    parser.add_argument(
        "--seq-len", type=int, metavar="T", help=f"tokens per row (default {defaults.seq_len})"
    )
    parser.add_argument(
        "--lr", type=float, metavar="LR", help="peak learning rate (default: the spec's)"
    )
    parser.add_argument(
        "--warmup", type=int, metavar="N", help="warmup updates (default: steps/10, at most 100)"
    )
    parser.add_argument(
        "--grad-clip",
        type=float,
        metavar="X",
        help=f"max gradient norm, 0 = off (default {defaults.grad_clip})",
    )
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<spec name>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last checkpoint, with its --set overrides; "
        "a larger --steps extends it at the schedule's final rate",
    )
    parser.add_argument(
        "--init-from",
        metavar="RUN",
        help="start a new run from RUN's latest weights: tensors with the same name and shape "
        "are copied (NL §7.3); optimizer state and step start fresh",
    )
    parser.add_argument(
        "--init-map",
        action="append",
        metavar="DEST=SRC",
        help="with --init-from: new tensors named DEST... take RUN's SRC... (name prefixes, "
        "* = one segment, e.g. layers.*.memories.C.initial.0=layers.*.ops.f.proj.weight; "
        "repeatable)",
    )
    parser.add_argument(
        "--device", metavar="D", help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N (default auto)"
    )
    parser.add_argument(
        "--seed", type=int, metavar="S", help=f"random seed (default {defaults.seed})"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set dims.d_model=128 (repeatable)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help=f"validate every N updates (default {defaults.eval_every})",
    )
    parser.add_argument(
        "--ckpt-every",
        type=int,
        metavar="N",
        help=f"checkpoint every N updates (default {defaults.ckpt_every})",
    )
    parser.add_argument(
        "--keep-checkpoints",
        type=int,
        metavar="N",
        help=f"checkpoints kept (default {defaults.keep_checkpoints})",
    )
    parser.add_argument(
        "--carry-state",
        action="store_true",
        default=None,
        help="read the text as streams and carry in-context memory from step to step",
    )
    parser.add_argument(
        "--recompute",
        metavar="{auto,spans,off,N}",
        help="what backward recomputes: auto (sequences of 1,024 tokens or more: the deep "
        "memories rerun groups of 8 chunks, and models with sequential segments and no CMS "
        "train in recomputed spans, keeping only the state between spans; Muon memories "
        "rerun their chunks at any length; default), spans "
        "(spans at any length, any model: less memory for one more forward pass), N (spans "
        "of N tokens, a multiple of the model's span unit, which `nestdsl show` prints) or "
        "off (no recomputation at all: the fastest step, the most memory)",
    )
    parser.add_argument(
        "--log",
        choices=LOG_CHOICES,
        help="jsonl: metrics.jsonl and loss.png (default); tensorboard: also event files "
        "in RUN_DIR/tensorboard",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _given_settings(args: argparse.Namespace) -> dict:
    given = {
        field: getattr(args, flag)
        for flag, field in SETTINGS.items()
        if getattr(args, flag) is not None
    }
    if "data" in given:  # a file becomes absolute (resume from anywhere); a corpus name stays
        given["data"] = corpus_argument(given["data"])
    if "init_from" in given:
        given["init_from"] = str(Path(given["init_from"]).resolve())
    return given


def _format_loss(loss: float | None, bpb: float | None, tokenizer: str) -> str:
    if loss is None:
        return "n/a"
    unit = "" if tokenizer == BYTES else " nats/token"  # a byte run's line is as it always was
    return f"{loss:.4f}{unit} ({bpb:.4f} bits/byte)"


def run(args: argparse.Namespace) -> int:
    source = spec_source(args.spec, args.set)
    out = Path(args.out) if args.out else Path("runs") / source.name.replace("/", "_")
    given = _given_settings(args)
    overrides = list(args.set)
    if args.resume and (args.init_from is not None or args.init_map is not None):
        raise UserError(
            "--init-from starts a new run from another run's weights; a resumed run already "
            "has its own (drop --init-from / --init-map, or start a new run with --out)"
        )
    if args.resume:
        overrides = resume_overrides(out, args.set)
        config = resume_config(out, given)
    else:
        config = TrainConfig(**given)
    if overrides != list(args.set) or config.tokenizer != BYTES:
        source = spec_source(args.spec, overrides, config.tokenizer)
    checked = source.checked
    if int(os.environ.get("RANK", "0")) == 0 and getattr(checked, "plan", None) is not None:
        if config.tokenizer != BYTES:
            derived = [o for o in source.overrides if o not in overrides]
            shown = f" (spec override: {', '.join(derived)})" if derived else ""
            print(f"tokenizer: {config.tokenizer}, vocabulary {source.vocab}{shown}; trained on "
                  "the training text, saved as tokenizer.json in the run folder")  # fmt: skip
        # What is about to train: its size by level, and what makes it slow.
        print(summary(checked), end="\n\n", flush=True)
    try:
        result = train(source, config, out, resume=args.resume, progress=not args.no_progress)
    except TrainingInterrupted as interrupted:
        print(f"nestdsl train: {interrupted}", file=sys.stderr)
        return 128 + interrupted.signal
    if result.is_main:
        print(f"run folder:  {result.run_dir}")
        print(f"loss plot:   {result.plot}")
        print(f"checkpoint:  {result.checkpoint}")
        print(
            f"final loss:  train {_format_loss(result.train_loss, result.train_bpb, config.tokenizer)}, "
            f"validation {_format_loss(result.val_loss, result.val_bpb, config.tokenizer)}"
        )
    return 0
