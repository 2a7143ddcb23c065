"""One outer optimizer per `every: step` level, under one learning-rate schedule.

In Nested Learning every level is its own optimization problem with its own optimizer
(NL §3.2, §4: "optimizers are associative memories"); a spec may therefore put, say, one block
on a level trained by M3 and the rest on a level trained by AdamW. `LevelOptimizers` holds one
torch optimizer per trained level, each owning exactly the parameters the compiled model's
`parameter_levels()` assigns to that level. Parameters of `every: never` levels belong to no
optimizer: they are never updated.

The run's schedule is shared: at each update every level runs at `its peak lr * schedule
factor`, so levels keep the ratio of their spec rates through warmup and decay. A level whose
optimizer names its own `schedule` is left alone: its optimizer scales its peak by its own
curve, counted in its own updates (nestdsl/optim/declared.py). A level with `period: N` gets
its gradients every step and updates every Nth (also in its optimizer), so the training loop
is the same for every level: `set_lr_factor`, `step`, `zero_grad`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nestdsl.errors import UserError

# The level name used when a model does not say which level owns what (one optimizer for all).
SINGLE_LEVEL = "outer"


class LevelOptimizers:
    """Several torch optimizers stepped together; `optimizers` maps level name -> optimizer."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], peaks: dict[str, float]):
        if not optimizers:
            raise UserError("the model has no trainable parameters")
        self.optimizers = dict(optimizers)
        self.peaks = {level: float(peaks[level]) for level in self.optimizers}

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def parameters(self) -> list[torch.Tensor]:
        """Every trained parameter (what gradient clipping measures)."""
        return [p for g in self.param_groups for p in g["params"]]

    def set_lr_factor(self, factor: float) -> None:
        """Every level at its peak rate times the schedule's factor for this update."""
        for level, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                if not group.get("schedule"):  # a level with its own curve keeps its peak
                    group["lr"] = self.peaks[level] * factor

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def describe(self) -> dict[str, str]:
        """Level -> the optimizer's class and its trained parameter count (for messages)."""
        return {level: f"{type(opt).__name__}, {sum(p.numel() for g in opt.param_groups for p in g['params']):,} parameters"
                for level, opt in self.optimizers.items()}  # fmt: skip

    def __len__(self) -> int:
        return len(self.optimizers)

    def group_sizes(self) -> dict[str, list[int]]:
        """Level -> the number of parameters in each of its optimizer's groups."""
        return {level: [len(g["params"]) for g in opt.param_groups]
                for level, opt in self.optimizers.items()}  # fmt: skip


def owners_of(model: torch.nn.Module, levels: Iterable[str]) -> dict[str, str]:
    """Parameter name -> owning level: the model's `parameter_levels()`, or all to one level."""
    levels = list(levels)
    method = getattr(model, "parameter_levels", None)
    names = [name for name, _ in model.named_parameters()]
    if method is None:
        if len(levels) != 1:
            raise UserError(
                f"the model has {len(levels)} trained levels ({', '.join(levels)}) but no "
                "parameter_levels() saying which level owns each parameter"
            )
        return dict.fromkeys(names, levels[0])
    owners = dict(method())
    missing = [n for n in names if n not in owners]
    if missing:
        raise RuntimeError(  # the compiler's contract, not a user's mistake
            f"parameter_levels() misses {missing[:3]}; this is a bug in nestdsl, please report it"
        )
    return owners


def build_level_optimizers(
    model: torch.nn.Module, configs: dict[str, dict], build, undecayed: set[str] | None = None
) -> LevelOptimizers:
    """One optimizer per level of `configs` (level -> optimizer config dict) over its parameters.

    `build(named_params, config, undecayed)` makes one torch optimizer
    (nestdsl.optim.build_optimizer); `undecayed` defaults to the model's own list.
    A level that owns no trainable parameter gets no optimizer.
    """
    from nestdsl.optim import optimizer_settings, undecayed_of

    owners = owners_of(model, configs)
    undecayed = undecayed_of(model) if undecayed is None else undecayed
    mine: dict[str, list] = {level: [] for level in configs}
    for name, param in model.named_parameters():
        level = owners[name]
        if level in mine and param.requires_grad:
            mine[level].append((name, param))
    optimizers = {level: build(params, configs[level], undecayed)
                  for level, params in mine.items() if params}  # fmt: skip
    peaks = {level: optimizer_settings(configs[level])["lr"] for level in optimizers}
    return LevelOptimizers(optimizers, peaks)
