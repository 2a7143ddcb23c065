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


def _meta_model(plan):
    from nestdsl.compiler.modules.model import CompiledModel

    with torch.device("meta"):
        return CompiledModel(plan)


def count_by_level(plan) -> dict[str, LevelCount]:
    from nestdsl.compiler.modules.memory_base import MemoryModule

    model = _meta_model(plan)
    counts = {name: LevelCount() for name in plan.spec.levels}
    params = dict(model.named_parameters())
    for name, level in model.parameter_levels().items():
        counts[level].parameters += params[name].numel()
    for module in model.modules():
        if isinstance(module, MemoryModule) and isinstance(module.plan.every, int):
            counts[module.plan.level].state += module.state_size()
    return counts


def flops_per_token(plan, context: int = 1024) -> float:
    """An estimate of the forward FLOPs per token, from the module's sizes: 2 per weight of
    every matrix product the token goes through (the embedding is a lookup), and per memory
    instance, for an in-context memory 6 per state number for its write (forward, gradient,
    step) plus 2 per state number for each read (and, for `muon`, the Newton-Schulz steps on
    every weight matrix, token by token), for a static memory 2 per weight per read, and for a
    cache 4 x heads x key size x the positions it attends to (half of `context`, or its
    window). Elementwise work and norms are left out."""
    from nestdsl.compiler.modules.memory_base import MemoryModule
    from nestdsl.compiler.modules.memory_kernels import CacheMemory

    model = _meta_model(plan)
    memories = [m for m in model.modules() if isinstance(m, MemoryModule)]
    in_memories = {id(p) for m in memories for p in m.parameters()}
    flops = 0.0
    for name, p in model.named_parameters():
        if p.dim() >= 2 and id(p) not in in_memories and not name.startswith("embed."):
            flops += 2 * p.numel()
    if model.tied:
        flops += 2 * model.embed.weight.numel()
    for m in memories:
        reads = len(m.plan.reads) + len(m.plan.feedback)
        if isinstance(m, CacheMemory):
            seen = min(m.window, context) if m.window else context / 2
            flops += 4 * m.plan.heads * m.lowered.key_dim * seen * reads  # after the map
        elif isinstance(m.plan.every, int):
            flops += (6 + 2 * reads) * m.state_size()
            if m.lowered.rule == "muon":  # per step on X [a, b], a <= b: X X^T, its square, B X
                for w in m.initial:
                    a, b = sorted(w.shape[-2:])
                    flops += m.lowered.ns_steps * w.shape[0] * (4 * a * a * b + 2 * a**3)
        else:
            flops += 2 * reads * sum(p.numel() for p in m.parameters())
    return flops
