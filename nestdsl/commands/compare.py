"""`nestdsl compare SPEC... --budget TOKENS`: train specs alike, evaluate them, write a report.

The work is `nestdsl.compare` (protocol and layout in its modules and docs/evaluation.md);
this module reads the command line into `CompareSettings` and prints where the report is.
"""

from __future__ import annotations

import argparse

from nestdsl.compare.settings import DEFAULT_TASKS

HELP = "train several specs on the same data and token budget, evaluate them, write a report"
EXAMPLE = (
    "nestdsl compare transformer gated-deltanet titans-lmm hope --budget 300000 "
    "--match-params --seeds 0,1 --out runs/compare"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="shipped spec names or files")
    parser.add_argument(
        "--budget", required=True, type=int, metavar="TOKENS",
        help="training tokens per run; steps = TOKENS / (batch x seq-len)",
    )  # fmt: skip
    parser.add_argument(
        "--match-params", action="store_true",
        help="resize every spec's d_model to the first spec's parameter count (or --params)",
    )  # fmt: skip
    parser.add_argument("--params", type=int, metavar="N", help="the target of --match-params")
    parser.add_argument(
        "--param-tolerance", type=float, default=0.05, metavar="F",
        help="relative tolerance of --match-params (default 0.05)",
    )  # fmt: skip
    parser.add_argument("--seeds", default="0", metavar="S,...", help="seeds (default 0)")
    parser.add_argument(
        "--tasks", default=",".join(DEFAULT_TASKS), metavar="T,...",
        help=f"evaluation tasks after training (default {','.join(DEFAULT_TASKS)}); "
        "see `nestdsl eval --help`",
    )  # fmt: skip
    parser.add_argument(
        "--task-set", action="append", default=[], metavar="TASK.FLAG=VALUE",
        help="a task's own option, as `nestdsl eval --task TASK` takes it (e.g. "
        "recall.steps=300), repeatable",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/compare", metavar="DIR", help="report folder")
    parser.add_argument("--resume", action="store_true", help="continue the comparison in --out")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="default 8")
    parser.add_argument("--seq-len", type=int, default=128, metavar="T", help="default 128")
    parser.add_argument("--data", metavar="FILE", help="training corpus (default: Shakespeare)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a value of every spec (before --match-params resizes), repeatable",
    )  # fmt: skip
    parser.add_argument("--eval-every", type=int, metavar="N", help="validation points (steps)")
    parser.add_argument(
        "--eval-batches", type=int, default=4, metavar="N",
        help="validation batches per point (default 4)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", metavar="D", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from nestdsl.compare import CompareSettings, compare
    from nestdsl.compare.settings import parse_seeds, parse_task_options, parse_tasks
    from nestdsl.data.corpus import corpus_argument

    tasks = parse_tasks(args.tasks)
    data = corpus_argument(args.data) if args.data else None  # a corpus name stays a name
    settings = CompareSettings(
        specs=tuple(args.specs), budget=args.budget, seeds=parse_seeds(args.seeds),
        tasks=tasks, task_options=parse_task_options(args.task_set, tasks),
        match_params=args.match_params, params=args.params, tolerance=args.param_tolerance,
        batch_size=args.batch_size, seq_len=args.seq_len, data=data,
        overrides=tuple(args.set), eval_every=args.eval_every, eval_batches=args.eval_batches,
        device=args.device,
        resume=args.resume, progress=not args.no_progress,
    )  # fmt: skip
    paths = compare(settings, args.out)
    done = ", ".join(f"{k}: {v}" for k, v in sorted(paths["actions"].items()))
    print(f"work:        {done}")
    print(f"report:      {paths['report.md']}")
    print(f"numbers:     {paths['report.json']}")
    print(f"loss curves: {paths['loss_curves']}")
    if "recall" in paths:
        print(f"recall:      {paths['recall']}")
    return 0
