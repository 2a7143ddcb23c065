"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

The schedule is a pure function of the step, so its only "state" in a checkpoint is the step
itself and a resumed run continues on exactly the same curve.

Step `s` (0-based) is the index of the optimizer update being made:

* warmup, `s < warmup`: `lr = base * (s + 1) / warmup`, so update 0 already moves and update
  `warmup - 1` uses the full rate;
* decay, `s >= warmup`: `lr = floor + (base - floor) * (1 + cos(pi * p)) / 2` with
  `p = (s - warmup) / (total - warmup)`, which is `base` at `s = warmup` and reaches
  `floor = base * min_ratio` at `s = total` (one past the last update);
* after the end, `s >= total` (a resumed run extended with a larger `--steps`): `floor`. The
  schedule is fixed when a run starts (config.json records it), so resuming never moves it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WarmupCosine:
    base_lr: float
    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, {self.total_steps}], got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")

    def lr_at(self, step: int) -> float:
        """The learning rate for update number `step` (0-based)."""
        return self.base_lr * self.factor_at(step)

    def factor_at(self, step: int) -> float:
        """The rate of update `step` as a fraction of the peak (each outer level scales its own
        peak by it). Past `total_steps` (a resumed run given a larger --steps) the rate stays at
        the floor: extending a run never re-warms it."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps <= 0:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def as_dict(self) -> dict:
        return {"kind": "warmup_cosine", **asdict(self)}


def default_warmup(total_steps: int) -> int:
    """Warmup length when none is given: a tenth of the run, at most 100 updates."""
    return min(100, total_steps // 10)
