"""The compiler's passes, one per file, run in this order by `nestdsl.compiler.run_passes`.

Each pass reads the plan the earlier ones left and raises `SpecError` (positioned diagnostics)
for what it cannot lower; `nestdsl validate` runs them all, `lower` builds the module.
"""

from nestdsl.compiler.passes.expand_blocks import expand_blocks
from nestdsl.compiler.passes.group_memories import group_memories
from nestdsl.compiler.passes.lower_memories import lower_memories
from nestdsl.compiler.passes.pick_kernels import pick_kernels
from nestdsl.compiler.passes.resolve_dims import resolve_dims
from nestdsl.compiler.passes.schedule_levels import schedule_levels

PASSES = {
    "resolve_dims": resolve_dims,
    "expand_blocks": expand_blocks,
    "schedule_levels": schedule_levels,
    "lower_memories": lower_memories,
    "pick_kernels": pick_kernels,
    "group_memories": group_memories,
}

__all__ = ["PASSES"]
