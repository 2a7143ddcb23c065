"""The compiler: named passes over a checked spec, then lowering to a PyTorch module.

    plan = run_passes(checked)                 # resolve_dims, expand_blocks, schedule_levels,
    model = compile(checked)                   # pick_kernels, then lower
    print(run_passes(checked, until="schedule_levels").describe())
"""

from __future__ import annotations

from nestdsl.compiler.passes import PASSES, lower
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
    return lower(run_passes(checked))


__all__ = ["PASSES", "Plan", "compile", "run_passes"]
