"""The one implementation of every optimizer written as memories of gradients (NL §4, App. B).

`DeclaredOptimizer(params, declaration, settings)` is a `torch.optim.Optimizer` built from a
`Declaration` (nestdsl/spec/optimizer.py): for every parameter p with gradient g, at update t,

    g <- g + wd p                          (only when `decoupled: false`, as torch.optim.SGD)
    for each memory, in declaration order:
        write g (or, every N updates, the sum of the previous N gradients) into it
    d  = Σ_terms weight * map(read(memory) [/ mass])        map: identity or Newton-Schulz
    d  = d / (sqrt(read(v) [/ mass]) + eps)                 when the update has `precondition`
    p <- p (1 - lr wd)                                      (when `decoupled`, as AdamW)
    p <- p - lr d

`mass` is the total weight a memory has written, `mass <- retention mass + lr`: dividing by it
is Adam's bias correction (1 - β^t with lr = 1 - β), and it is the normalizer of a linear
memory in general. Settings live in the param groups, as in torch: a number in the declaration
may name one (`betas[0]`, `1 - beta1`) and is read from the group at each update, so changing
`group["momentum"]` takes effect at once.

Two options come from the level that owns the optimizer (NL §3.2's frequencies, issue 12):
`period` N makes the optimizer sum the gradients of N calls of `step()` and update on the Nth
(a slower outer level); `schedule` gives it its own learning-rate curve over its own updates
(the `lr` of each group is then the peak). Both counters, `calls` and `updates`, live in the
param groups, and every state tensor in `state`, so `state_dict()` resumes it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nestdsl.errors import UserError
from nestdsl.kernels.newton_schulz import newton_schulz as orthogonalize
from nestdsl.optim import gradient_memory as memories
from nestdsl.spec.optimizer import Declaration, GradDGD, resolve

# Group keys the optimizer itself uses; no setting may take these names.
RESERVED = ("params", "period", "schedule", "calls", "updates")


def newton_schulz(matrix: torch.Tensor, steps: int, kind: str = "quintic") -> torch.Tensor:
    """Approximately orthogonalize a 2-D matrix (its polar factor U V^T) with `steps` iterations.

    Computed in float32 whatever the parameter dtype, so results are reproducible on the CPU.
    """
    if matrix.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a matrix, got shape {tuple(matrix.shape)}")
    return orthogonalize(matrix.float(), steps, kind).to(matrix.dtype)


def evaluate(expr, settings: dict):
    """A declaration's number read from a group's settings (spec/optimizer.py `resolve`)."""
    try:
        return resolve(expr, settings)
    except ValueError as err:
        raise UserError(str(err)) from None


def schedule_factor(schedule: dict | None, update: int) -> float:
    """The level's own lr factor at its update `update` (0-based); 1 without a schedule."""
    if not schedule:
        return 1.0
    from nestdsl.train.schedule import WarmupCosine

    warmup = int(schedule.get("warmup", 0))
    if schedule["kind"] == "constant":
        return (update + 1) / warmup if update < warmup else 1.0
    curve = WarmupCosine(1.0, warmup, int(schedule["total"]), float(schedule["min_ratio"]))
    return curve.factor_at(update)


class DeclaredOptimizer(torch.optim.Optimizer):
    """An optimizer whose update is a set of memories of the gradients; see the module doc."""

    def __init__(
        self,
        params: Iterable,
        declaration: Declaration,
        settings: dict,
        period: int = 1,
        schedule: dict | None = None,
    ) -> None:
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        clash = [k for k in settings if k in RESERVED]
        if clash:
            raise UserError(f"settings may not be named {', '.join(clash)}")
        for key in ("lr", "weight_decay"):
            if key not in settings:
                raise UserError(f"a declared optimizer needs the setting `{key}`")
        if int(period) < 1:
            raise UserError(f"period must be at least 1, got {period}")
        self.declaration = declaration
        defaults = {**settings, "period": int(period), "schedule": schedule, "calls": 0, "updates": 0}
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._numbers(group)  # every name resolves now, not at the first update

    def _numbers(self, group: dict) -> dict:
        """Every number the declaration uses, read from this group's settings."""
        out = {}
        for name, memory in self.declaration.memories.items():
            rule = memory.rule
            out[name] = {
                "retention": float(evaluate(memory.retention, group)),
                "every": int(evaluate(memory.every, group)),
                "lr": float(evaluate(rule.lr, group)),
                "erase": float(evaluate(rule.erase, group)) if isinstance(rule, GradDGD) else 0.0,
                "eps": float(evaluate(rule.eps, group)) if isinstance(rule, GradDGD) else 0.0,
            }
        out["terms"] = [
            (float(evaluate(t.weight, group)), int(evaluate(t.ns_steps, group)),
             str(evaluate(t.ns_kind, group)))
            for t in self.declaration.update.direction
        ]  # fmt: skip
        pre = self.declaration.update.precondition
        out["eps"] = float(evaluate(pre.eps, group)) if pre is not None else 0.0
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["calls"] += 1
            accumulate = group["period"] > 1
            due = group["calls"] % group["period"] == 0
            if accumulate:
                for param in group["params"]:
                    if param.grad is not None:
                        self._pending(param).add_(param.grad)
            if not due:
                continue
            numbers = self._numbers(group)
            update = group["updates"]
            lr = group["lr"] * schedule_factor(group["schedule"], update)
            for param in group["params"]:
                if accumulate:
                    grad = self._pending(param).clone()
                    self.state[param]["pending"].zero_()
                elif param.grad is None:
                    continue
                else:
                    grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("declared optimizers do not support sparse gradients")
                self._update(param, grad, group, numbers, update, lr)
            group["updates"] = update + 1
        return loss

    def _pending(self, param: torch.Tensor) -> torch.Tensor:
        state = self.state[param]
        if "pending" not in state:
            state["pending"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state["pending"]

    def _update(self, param, grad, group, numbers, update: int, lr: float) -> None:
        state = self.state[param]
        declaration = self.declaration
        weight_decay = group["weight_decay"]
        if weight_decay and not declaration.decoupled:
            grad = grad.add(param, alpha=weight_decay)
        written: set[str] = set()
        for name, memory in declaration.memories.items():
            if name not in state and f"{name}.W1" not in state:
                state.update(memories.init_state(name, memory, param))
                state[f"{name}.mass"] = param.new_zeros(())  # torch loads state in the param dtype
            n = numbers[name]
            if n["every"] > 1:
                # A slower memory: at the first update of each block of `every` updates it takes
                # the sum of the previous block's gradients (M3's slow momentum), then the
                # current gradient starts the next sum.
                block = state.setdefault(f"{name}.block", torch.zeros_like(param))
                if update > 0 and update % n["every"] == 0:
                    self._write(name, memory, state, block, n)
                    block.zero_()
                    written.add(name)
                block.add_(grad)
            else:
                self._write(name, memory, state, grad, n)
                written.add(name)
        direction = None
        for term, (weight, ns_steps, ns_kind) in zip(
            declaration.update.direction, numbers["terms"], strict=True
        ):
            memory = declaration.memories[term.memory]
            cached = numbers[term.memory]["every"] > 1 and term.map == "newton_schulz"
            key = f"{term.memory}.{term.map}"
            if cached and key in state and term.memory not in written:
                value = state[key].clone()  # a slow memory's map changes only when it is written
            else:
                value = memories.read(term.memory, memory, state, grad)
                if term.debias:
                    value = value / _mass(state, term.memory)
                if term.map == "newton_schulz" and value.ndim == 2:
                    value = newton_schulz(value, ns_steps, ns_kind)
                if cached:
                    state[key] = value.clone()
            direction = value.mul_(weight) if direction is None else direction.add_(value, alpha=weight)
        pre = declaration.update.precondition
        if pre is not None:
            second = state[pre.memory]
            if pre.debias:
                second = second / _mass(state, pre.memory)
            if pre.eps_inside:
                denominator = second.add(numbers["eps"]).sqrt_()
            else:
                denominator = second.sqrt().add_(numbers["eps"])
            direction = direction.div_(denominator)
        if weight_decay and declaration.decoupled:
            param.mul_(1.0 - lr * weight_decay)
        param.add_(direction, alpha=-lr)

    @staticmethod
    def _write(name, memory, state, context, n) -> None:
        memories.write(name, memory, state, context, n["retention"], n["lr"], n["erase"], n["eps"])
        mass = state[f"{name}.mass"]
        mass.mul_(n["retention"]).add_(n["lr"])


def _mass(state: dict, name: str) -> float:
    return float(state[f"{name}.mass"])
