"""`nestdsl eval RUN_OR_SPEC --task TASK`: evaluate a spec or a trained run; a JSON result.

Each task is one module of `nestdsl.eval` (listed in `nestdsl.eval.TASKS`, protocols in its
docstring and in docs/evaluation.md) that declares its own command-line flags:

* `FLAGS`: option name -> argparse keyword arguments (the flag is `--name-with-dashes`); two
  tasks may share a flag (same meaning, e.g. `--steps`), declared alike in both;
* `run_cli(subject, given, context) -> dict`: run the task; `given` holds only the flags the
  user set, so the task applies its own defaults;
* `summary(result) -> str`: a few lines for the screen.

A flag of another task is refused with the tasks it belongs to, so a typo never runs silently.
Every task has a fixed seed (`--seed`, default 0) and needs nothing from the network.
"""

from __future__ import annotations

import argparse

from nestdsl.errors import UserError
from nestdsl.eval import TASKS, task_module
from nestdsl.eval.report import default_result_path, write_result
from nestdsl.eval.subject import EvalContext, is_run_folder

HELP = "evaluate a spec or a trained run: " + ", ".join(TASKS)
EXAMPLE = "nestdsl eval deltanet --task recall --grid L=64,N=8,d_model=64 --steps 3000"


def task_flags() -> dict[str, dict]:
    """Every task flag once: name -> {"kwargs": argparse kwargs, "helps": task -> its help}."""
    flags: dict[str, dict] = {}
    for task in TASKS:
        for name, kwargs in task_module(task).FLAGS.items():
            entry = flags.setdefault(name, {"kwargs": kwargs, "helps": {}})
            entry["helps"][task] = kwargs.get("help", "")
    return flags


def shared_help(helps: dict[str, str]) -> str:
    """One help line for a flag: `[a, b] text` for the tasks that say the same, each other text
    with its own tasks (a shared flag such as --batch-size has each task's own default)."""
    tasks_of: dict[str, list[str]] = {}
    for task, text in helps.items():
        tasks_of.setdefault(text, []).append(task)
    return "; ".join(f"[{', '.join(tasks)}] {text}".rstrip() for text, tasks in tasks_of.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "subject", metavar="RUN_OR_SPEC",
        help="a run folder written by `nestdsl train`, a shipped spec name or a spec file",
    )  # fmt: skip
    parser.add_argument("--task", required=True, choices=TASKS, help="what to measure")
    parser.add_argument("--out", metavar="FILE", help="result JSON (default: runs/eval/... )")
    parser.add_argument("--device", default="cpu", metavar="D", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec value (after the task's resizing), repeatable",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    group = parser.add_argument_group("task options (the tasks each applies to in brackets)")
    for name, entry in task_flags().items():
        kwargs = {**entry["kwargs"], "help": shared_help(entry["helps"])}
        group.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **kwargs)


def given_flags(args: argparse.Namespace) -> dict:
    """The task flags the user set for `args.task`; UserError for flags of other tasks."""
    flags = task_flags()
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    foreign = [name for name in given if args.task not in flags[name]["helps"]]
    if foreign:
        parts = [
            f"--{n.replace('_', '-')} (belongs to --task {' / '.join(flags[n]['helps'])})"
            for n in foreign
        ]
        raise UserError(f"--task {args.task} takes no {', '.join(parts)}")
    return given


def run(args: argparse.Namespace) -> int:
    from nestdsl.train.distributed import resolve_device

    given = given_flags(args)
    context = EvalContext(
        device=resolve_device(args.device), overrides=list(args.set), seed=args.seed,
        progress=not args.no_progress, run_folder=is_run_folder(args.subject), out=args.out,
    )  # fmt: skip
    module = task_module(args.task)
    result = module.run_cli(args.subject, given, context)
    path = args.out or default_result_path(
        args.subject, args.task, result["spec"], context.run_folder
    )
    write_result(result, path)
    print(module.summary(result))
    print(f"result: {path}")
    return 0
