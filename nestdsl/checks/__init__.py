"""Named checks over a spec and its level graph; each yields diagnostics at YAML positions.

Every check runs even when others fail, so a user sees all problems at once. A check that needs
a sound graph (shapes, flow) skips the parts that earlier errors already reported.
"""

from nestdsl.checks.context import CheckContext
from nestdsl.checks.flow import check_flow
from nestdsl.checks.levels import check_levels
from nestdsl.checks.memories import check_memories
from nestdsl.checks.reachability import check_reachability
from nestdsl.checks.references import check_references
from nestdsl.checks.shapes import check_shapes

# In report order; names are what `error[...]` codes and docs refer to.
CHECKS = {
    "references": check_references,
    "levels": check_levels,
    "memories": check_memories,
    "shapes": check_shapes,
    "flow": check_flow,
    "reachability": check_reachability,
}

__all__ = ["CHECKS", "CheckContext"]
