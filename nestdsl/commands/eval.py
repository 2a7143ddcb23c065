"""`nestdsl eval RUN_OR_SPEC --task TASK`: evaluate a spec or a trained run; a JSON result.

Tasks (protocols in docs/evaluation.md and in each task's module docstring):

* `recall`: train the spec from scratch on multi-query associative recall (Zoology's MQAR) at
  each `--grid` point and report held-out accuracy;
* `bpb`: bits per byte on held-out text, for a run folder (its latest checkpoint) or a spec
  (untrained).

Every task has a fixed seed (`--seed`, default 0) and needs nothing from the network.
"""

from __future__ import annotations

import argparse

from nestdsl.errors import UserError
from nestdsl.eval import TASKS
from nestdsl.eval.grid import parse_grid
from nestdsl.eval.recall import GRID_KEYS, RecallSettings
from nestdsl.eval.report import default_result_path, summary, write_result
from nestdsl.eval.subject import is_run_folder

HELP = "evaluate a spec or a trained run: associative recall (MQAR) or bits per byte"
EXAMPLE = "nestdsl eval deltanet --task recall --grid L=64,N=8,d_model=64 --steps 3000"

# Flags of the recall task that map one to one onto RecallSettings fields.
RECALL_FLAGS = ("steps", "batch_size", "lr", "weight_decay", "grad_clip", "eval_rows", "heads",
                "layers", "vocab", "seed")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RecallSettings()
    parser.add_argument(
        "subject", metavar="RUN_OR_SPEC",
        help="a run folder written by `nestdsl train`, a shipped spec name or a spec file",
    )  # fmt: skip
    parser.add_argument("--task", required=True, choices=TASKS, help="what to measure")
    parser.add_argument("--out", metavar="FILE", help="result JSON (default: runs/eval/... )")
    parser.add_argument("--device", default="cpu", metavar="D", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec value (after the task's resizing), repeatable",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    recall = parser.add_argument_group("recall")
    recall.add_argument(
        "--grid", action="append", default=[], metavar="K=V,...",
        help=f"grid points, keys {', '.join(GRID_KEYS)}; '/' lists values "
        f"(default {','.join(f'{k}={v}' for k, v in GRID_KEYS.items())}), repeatable",
    )  # fmt: skip
    numbers = {"steps": int, "batch_size": int, "lr": float, "weight_decay": float,
               "grad_clip": float, "eval_rows": int, "heads": int, "layers": int,
               "vocab": int, "seed": int}  # fmt: skip
    for name in RECALL_FLAGS:
        recall.add_argument(
            "--" + name.replace("_", "-"), type=numbers[name], metavar="X",
            help=f"default {getattr(defaults, name)}",
        )  # fmt: skip
    bpb = parser.add_argument_group("bpb")
    bpb.add_argument("--data", metavar="FILE", help="corpus whose held-out tail is scored")
    bpb.add_argument("--seq-len", type=int, metavar="T", help="bytes per window (default: run's)")
    bpb.add_argument("--max-bytes", type=int, metavar="N", help="bytes scored (default 262144)")


def _recall_settings(args: argparse.Namespace) -> RecallSettings:
    given = {n: getattr(args, n) for n in RECALL_FLAGS if getattr(args, n) is not None}
    return RecallSettings(**given)


def run(args: argparse.Namespace) -> int:
    from nestdsl.eval import run_bpb, run_recall  # torch loads only when a task runs
    from nestdsl.train.distributed import resolve_device

    device = resolve_device(args.device)
    progress = not args.no_progress
    folder = is_run_folder(args.subject)
    if args.task == "recall":
        if folder:
            raise UserError(
                "recall trains from scratch: give a spec (name or file), not a run folder"
            )
        if args.data or args.seq_len or args.max_bytes:
            raise UserError("--data, --seq-len and --max-bytes belong to --task bpb")
        points = parse_grid(args.grid, GRID_KEYS)
        result = run_recall(
            args.subject, points, _recall_settings(args), device, args.set, progress
        )
    else:
        if args.grid or any(getattr(args, n) is not None for n in RECALL_FLAGS if n != "seed"):
            raise UserError("--grid and the training flags belong to --task recall")
        extra = {"max_bytes": args.max_bytes} if args.max_bytes else {}
        result = run_bpb(
            args.subject, args.data, args.seq_len, device=device, overrides=args.set,
            seed=args.seed or 0, progress=progress, **extra,
        )  # fmt: skip
    path = args.out or default_result_path(args.subject, args.task, result["spec"], folder)
    write_result(result, path)
    print(summary(result))
    print(f"result: {path}")
    return 0
