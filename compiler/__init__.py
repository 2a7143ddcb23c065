"""The compiler: named passes over a checked spec, then lowering to a PyTorch module.

    plan = run_passes(checked)                 # resolve_dims, expand_blocks, schedule_levels,
    model = compile(checked)                   # lower_memories, pick_kernels; then the module
    print(run_passes(checked, until="schedule_levels").describe())

`nestdsl.load` already ran every pass (`checked.plan`), so what loads compiles.
"""

from __future__ import annotations

from nestdsl.compiler.passes import PASSES
from nestdsl.compiler.plan import Plan


def run_passes(checked, until: str | None = None) -> Plan:
    """Run the passes in order, stopping after `until` (a pass name) if given."""
    if until is not None and until not in PASSES:
        raise ValueError(f"unknown pass `{until}`; passes: {', '.join(PASSES)}")
    plan = Plan(checked)
    for name, run in PASSES.items():
        plan = run(plan)
        if name == until:
            break
    return plan


def compile(checked):  # noqa: A001 - the public name the design asks for
    """A checked spec (from `nestdsl.load`) as a `torch.nn.Module`."""
    from nestdsl.compiler.modules.model import CompiledModel  # torch loads only here

    plan = checked.plan if getattr(checked, "plan", None) is not None else run_passes(checked)
    return CompiledModel(plan)


__all__ = ["PASSES", "Plan", "compile", "run_passes"]
