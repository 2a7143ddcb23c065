"""The mutation operators of `nestdsl explore`, by name, and chains of them.

Each operator moves a spec along one axis of the Nested Learning design space (its docstring
says which, with the paper section). They live in two files: mutations_levels.py (clocks,
chunks, levels, CMS, nesting) and mutations_memory.py (a memory's structure, objective, rule,
retention; adaptive projections). `mutate` applies a seeded chain of them to a spec document;
candidates.py then sends the result through the full validate path.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

from nestdsl.explore import mutations_levels as lv
from nestdsl.explore import mutations_memory as mm
from nestdsl.explore.spec_doc import NotApplicable

Operator = Callable[[dict, random.Random], str]

OPERATORS: dict[str, Operator] = {
    "add_level": lv.add_a_level,
    "remove_level": lv.remove_a_level,
    "change_period": lv.change_period,
    "move_memory": lv.move_memory,
    "swap_structure": mm.swap_structure,
    "swap_objective": mm.swap_objective,
    "swap_rule": mm.swap_rule,
    "swap_retention": mm.swap_retention,
    "make_adaptive": mm.make_adaptive,
    "insert_cms": lv.insert_cms_level,
    "remove_cms": lv.remove_cms_level,
    "change_chunk": lv.change_chunk,
    "nest_levels": lv.nest_levels,
    "unnest_levels": lv.unnest_levels,
}


def mutate(doc: dict, rng: random.Random, steps: int, operators: list[str] | None = None
           ) -> tuple[dict, list[str], list[str]]:  # fmt: skip
    """A copy of `doc` after `steps` operators drawn from `operators` (default: all).

    Returns (new document, what each applied operator did, names of operators that did not
    apply). An operator that does not apply leaves the document as it was and another is drawn,
    up to 4 draws per step, so a chain of `steps` usually applies `steps` operators.
    """
    names = list(operators or OPERATORS)
    current = copy.deepcopy(doc)
    done: list[str] = []
    skipped: list[str] = []
    for _ in range(steps):
        for _draw in range(4):
            name = names[rng.randrange(len(names))]
            trial = copy.deepcopy(current)
            try:
                done_line = OPERATORS[name](trial, rng)
            except NotApplicable:
                skipped.append(name)
                continue
            current = trial
            done.append(done_line)
            break
    return current, done, skipped
