"""Parameters and in-context state per level, read off the lowered module (`nestdsl show`).

The module is built on the `meta` device (shapes, no memory, no arithmetic), so the count is
the module's own `sum(p.numel())` split by the level the plan assigns each parameter to; it
cannot drift from what `compile` builds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LevelCount:
    parameters: int = 0  # numbers the level's optimizer trains (or, for `never`, holds frozen)
    state: int = 0  # numbers of in-context memory state the level updates, per sequence


def count_by_level(plan) -> dict[str, LevelCount]:
    from nestdsl.compiler.modules.memory_base import MemoryModule
    from nestdsl.compiler.modules.model import CompiledModel

    with torch.device("meta"):
        model = CompiledModel(plan)
    counts = {name: LevelCount() for name in plan.spec.levels}
    params = dict(model.named_parameters())
    for name, level in model.parameter_levels().items():
        counts[level].parameters += params[name].numel()
    for module in model.modules():
        if isinstance(module, MemoryModule) and isinstance(module.plan.every, int):
            counts[module.plan.level].state += module.state_size()
    return counts
