"""What a comparison is: its settings, checked, and how they are read from the command line.

A comparison trains every spec on the same corpus with the same token budget (steps = budget /
(batch x seq_len), the equal-data protocol of the Titans §5 and Nested Learning §7 tables), for
each seed, then runs the chosen evaluation tasks (`nestdsl.eval.TASKS`) on each. `settings.json`
in the output folder records the settings that decide the results; `--resume` continues only a
comparison with the same ones (the seeds, the tasks, their options, the device and progress
bars may change).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from nestdsl.errors import UserError

DEFAULT_TASKS = ("bpb",)  # cheap: scores each trained run, trains nothing more
# Settings that may differ when a comparison is resumed: they change no training run (each
# seed's runs are their own folders, so seeds may be added or left out of the report).
CHANGEABLE_ON_RESUME = ("seeds", "tasks", "task_options", "device", "progress", "resume")


@dataclass(frozen=True)
class CompareSettings:
    specs: tuple[str, ...]
    budget: int  # training tokens per run (per spec and seed)
    seeds: tuple[int, ...] = (0,)
    tasks: tuple[str, ...] = DEFAULT_TASKS
    task_options: dict[str, dict] = field(default_factory=dict)  # task -> {flag: value}
    match_params: bool = False
    params: int | None = None  # the target count; None with match_params: the first spec's
    tolerance: float = 0.05
    batch_size: int = 8
    seq_len: int = 128
    data: str | None = None  # corpus file; None: the embedded Shakespeare
    overrides: tuple[str, ...] = ()  # `--set` for every spec, before any resizing
    eval_every: int | None = None  # None: about 10 validation points per run
    eval_batches: int = 4  # validation batches per point (nestdsl train's --eval-batches)
    device: str = "cpu"
    resume: bool = False
    progress: bool = True

    @property
    def steps(self) -> int:
        return self.budget // (self.batch_size * self.seq_len)

    @property
    def tokens(self) -> int:
        """Tokens each run actually trains on (the budget rounded down to whole steps)."""
        return self.steps * self.batch_size * self.seq_len

    def check(self) -> None:
        from nestdsl.eval import TASKS

        if len(self.specs) < 1:
            raise UserError("compare: give at least one spec")
        for name in ("batch_size", "seq_len", "budget", "eval_batches"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"compare: --{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.steps < 1:
            raise UserError(
                f"compare: a budget of {self.budget:,} tokens is less than one step of "
                f"{self.batch_size} x {self.seq_len} = {self.batch_size * self.seq_len:,} tokens"
            )
        if not self.seeds:
            raise UserError("compare: --seeds lists no seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"compare: --seeds repeats a seed: {list(self.seeds)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise UserError(f"compare: unknown task {unknown[0]!r}; known: {', '.join(TASKS)}")
        if self.params is not None and self.params < 1:
            raise UserError(f"compare: --params must be positive, got {self.params}")
        if self.params is not None and not self.match_params:
            raise UserError("compare: --params N is the target of --match-params; add it")
        if not 0 < self.tolerance < 1:
            raise UserError(f"compare: --param-tolerance must be in (0, 1), got {self.tolerance}")
        if self.eval_every is not None and self.eval_every < 1:
            raise UserError(f"compare: --eval-every must be positive, got {self.eval_every}")
        for task in self.task_options:
            if task not in self.tasks:
                raise UserError(f"compare: --task-set names {task!r}, which --tasks does not run")

    def record(self) -> dict:
        """The settings as JSON (settings.json), `steps` and `tokens` made explicit."""
        body = dataclasses.asdict(self)
        body["steps"], body["tokens"] = self.steps, self.tokens
        return body

    def fixed(self) -> dict:
        """The part of record() a resumed comparison must repeat."""
        return {k: v for k, v in self.record().items() if k not in CHANGEABLE_ON_RESUME}


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0,1,2` as a tuple of seeds; UserError for anything that is not integers and commas."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(
            f"--seeds takes integers joined by commas (e.g. 0,1,2), got {text!r}"
        ) from None
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds must be non-negative, got {text!r}")
    return seeds


def parse_tasks(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_task_options(items: list[str], tasks: tuple[str, ...]) -> dict[str, dict]:
    """`recall.steps=300` items as {task: {flag: value}}, typed by the task's own FLAGS.

    The flag names are those of `nestdsl eval --task TASK` (dashes or underscores); a flag the
    task does not declare is refused with the ones it does.
    """
    from nestdsl.eval import TASKS, task_module

    options: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        task, dot, flag = key.strip().partition(".")
        if not (sep and dot and task and flag):
            raise UserError(
                f"--task-set takes TASK.FLAG=VALUE (e.g. recall.steps=300), got {item!r}"
            )
        if task not in TASKS:
            raise UserError(f"--task-set {item}: unknown task {task!r}; known: {', '.join(TASKS)}")
        if task not in tasks:
            raise UserError(f"--task-set {item}: --tasks does not run {task!r}")
        flags = task_module(task).FLAGS
        name = flag.replace("-", "_")
        if name not in flags:
            known = ", ".join(f.replace("_", "-") for f in flags) or "none"
            raise UserError(f"--task-set {item}: task {task} has no flag {flag!r}; it has: {known}")
        spec = flags[name]
        kind = spec.get("type", str)
        try:
            value = kind(raw.strip())
        except ValueError:
            raise UserError(
                f"--task-set {item}: {raw.strip()!r} is not a {kind.__name__}"
            ) from None
        if spec.get("action") == "append":
            options.setdefault(task, {}).setdefault(name, []).append(value)
        else:
            options.setdefault(task, {})[name] = value
    return options
