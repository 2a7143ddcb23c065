"""Mutation operators on the levels of a nesting: clocks, chunks, which memory runs where, CMS
levels, and which level owns a faster one's state (Nested Learning §3.2-3.3, §7.1).

Each operator takes a spec document (the YAML as dicts, see spec_doc.py) and a seeded
`random.Random`, changes the document in place and returns one line saying what it did, or
raises `NotApplicable` when the spec has nothing it can act on. Operators do not check the
result: every candidate goes through the full validate path afterwards (`candidates.py`), which
is the one judge of what is a spec.
"""

from __future__ import annotations

import random

from nestdsl.explore.spec_doc import (
    add_level,
    blocks,
    choose,
    drop_dead_nodes,
    drop_unused_levels,
    every,
    fresh,
    in_context_levels,
    is_cms,
    kind_of,
    level_with_period,
    levels,
    memories,
    memories_on,
    reads_of,
    rename_tensor,
)

PERIODS = (1, 2, 4, 8, 16, 32, 64, 128)  # in-context periods the operators pick from
CHUNKS = (4, 8, 16, 32, 64)  # chunks of a deep memory's gradients
CMS_PERIODS = (16, 32, 64)  # Hope's CMS ladder on ~128-byte sequences (specs/hope.yaml)


def _in_context_memories(doc: dict) -> list[str]:
    on = set(in_context_levels(doc))
    return [n for n, m in memories(doc).items() if isinstance(m, dict) and m.get("level") in on]


def add_a_level(doc: dict, rng: random.Random) -> str:
    """Add a level: a memory that shares its clock with others gets a clock of its own at a
    period no level has yet, one more level in the frequency ordering (NL §3.2, Definition 2:
    components with different update frequencies sit in different levels)."""
    shared = [n for n in _in_context_memories(doc) if len(memories_on(doc, memories(doc)[n]["level"])) > 1]
    name = choose(rng, shared, "level holding two memories to split")
    used = {every(doc, lv) for lv in in_context_levels(doc)}
    period = choose(rng, [p for p in PERIODS if p not in used], "free period")
    level = add_level(doc, f"{name.lower()}_clock", period)
    old = memories(doc)[name]["level"]
    memories(doc)[name]["level"] = level
    return f"add_level: `{name}` leaves `{old}` for a new level `{level}` (every {period})"


def remove_a_level(doc: dict, rng: random.Random) -> str:
    """Remove a level: every memory of one in-context level moves to another, and the emptied
    level is deleted, merging two frequencies into one (the inverse of `add_level`, NL §3.2)."""
    with_memories = [lv for lv in in_context_levels(doc) if memories_on(doc, lv)]
    gone = choose(rng, with_memories, "in-context level with memories")
    into = choose(rng, [lv for lv in in_context_levels(doc) if lv != gone], "second in-context level")
    period = every(doc, gone)
    for name in memories_on(doc, gone):
        memories(doc)[name]["level"] = into
    _retarget_owners(doc, gone, into)
    drop_unused_levels(doc)
    return f"remove_level: `{gone}` (every {period}) merged into `{into}` (every {every(doc, into)})"


def _retarget_owners(doc: dict, old: str, new: str) -> None:
    """Resets and initial states owned by `old` are owned by `new`; a memory that would own
    itself falls back to a per-sequence reset and the outer level's initial state."""
    for memory in memories(doc).values():
        if not isinstance(memory, dict):
            continue
        for part, key in (("init", "by"), ("reset", "level")):
            section = memory.get(part)
            if isinstance(section, dict) and section.get(key) == old:
                if memory.get("level") == new:
                    _unnest(memory)
                else:
                    section[key] = new


def change_period(doc: dict, rng: random.Random) -> str:
    """Change a level's period: the level moves to the neighbouring update frequency, twice or
    half as often (NL §3.2, Definition 2; the CMS ladder of §7.1 is periods a factor apart)."""
    level = choose(rng, [lv for lv in in_context_levels(doc) if memories_on(doc, lv)], "in-context level")
    old = every(doc, level)
    options = [p for p in (old * 2, old // 2) if 1 <= p <= 256]
    new = choose(rng, options, "neighbouring period")
    levels(doc)[level]["every"] = new
    return f"change_period: `{level}` every {old} -> {new}"


def change_chunk(doc: dict, rng: random.Random) -> str:
    """Change a chunk size: a deep memory's gradients within a chunk are all taken at the
    chunk-start state (Titans §3.2; NL §8.2, eqs. 90-91), so the chunk trades parallelism for
    how fresh the state is. The memory moves alone to a level of the new chunk."""
    deep = [n for n in _in_context_memories(doc)
            if kind_of(memories(doc)[n].get("structure")) in ("mlp", "gated_mlp")
            and not is_cms(memories(doc)[n])]  # fmt: skip
    name = choose(rng, deep, "deep in-context memory")
    memory = memories(doc)[name]
    old = every(doc, memory["level"])
    new = choose(rng, [c for c in CHUNKS if c != old], "other chunk")
    if len(memories_on(doc, memory["level"])) == 1:
        levels(doc)[memory["level"]]["every"] = new
    else:
        memory["level"] = level_with_period(doc, new, f"chunk_{new}")
        drop_unused_levels(doc)
    return f"change_chunk: `{name}` chunk {old} -> {new}"


def move_memory(doc: dict, rng: random.Random) -> str:
    """Move a memory to another level: the same optimization box on another clock, so the
    frequency ordering of the boxes changes (NL §3.2, the levels of Definition 3)."""
    name = choose(rng, _in_context_memories(doc), "in-context memory")
    memory = memories(doc)[name]
    old = memory["level"]
    to = choose(rng, [lv for lv in in_context_levels(doc) if lv != old], "second in-context level")
    memory["level"] = to
    if isinstance(memory.get("reset"), dict) and memory["reset"].get("level") == to:
        _unnest(memory)  # a level cannot reset its own memory: back to a per-sequence reset
    drop_unused_levels(doc)
    return f"move_memory: `{name}` from `{old}` to `{to}` (every {every(doc, to)})"


def insert_cms_level(doc: dict, rng: random.Random) -> str:
    """Insert a CMS level: a residual MLP block after a block's output, learned in context from
    the model's own loss every C tokens (NL §7.1, eqs. 70-71: one more link of the continuum
    memory chain), its initial state meta-learned by the outer level (sequential CMS, eq. 73)."""
    block = choose(rng, blocks(doc), "block")
    period = choose(rng, CMS_PERIODS, "CMS period")
    level = level_with_period(doc, period, f"cms_{period}")
    memory = fresh(doc, "C_cms")
    dim = doc.get("embed", {}).get("dim", "d_model")
    memories(doc)[memory] = {
        "structure": {"kind": "mlp", "heads": 1, "dim": dim, "depth": 2, "expansion": 2,
                      "residual": False},  # fmt: skip
        "level": level,
        "objective": "task",
        "rule": {"kind": "gd", "lr": 5.0e-3},  # hope's CMS step (specs/hope.yaml)
        "init": {"kind": "learned"},
        "reset": "sequence",
    }
    out = block["out"]
    norm, read, add = fresh(doc, "cms_n"), fresh(doc, "cms_c"), fresh(doc, "cms_x")
    block["nodes"][norm] = {"op": "rmsnorm", "in": out}
    block["nodes"][read] = {"op": "read", "memory": memory, "query": norm, "order": "chunk_start"}
    block["nodes"][add] = {"op": "add", "in": [out, read]}
    block["out"] = add
    return f"insert_cms: `{memory}` on `{level}` (every {period}) after `{out}`"


def remove_cms_level(doc: dict, rng: random.Random) -> str:
    """Remove a CMS level: one continuum-memory block leaves the chain (NL §7.1; with no CMS
    level left the feed-forward path is static, the Transformer case k = 1 of eq. 70). Its
    residual sum becomes the stream it was added to; a chained read becomes its query."""
    cms = [n for n, m in memories(doc).items() if isinstance(m, dict) and is_cms(m)]
    name = choose(rng, cms, "CMS memory")
    for block, node_name, node in list(reads_of(doc, name)):
        query = node.get("query")
        del block["nodes"][node_name]
        for other_name, other in list(block["nodes"].items()):
            ins = other.get("in") if isinstance(other, dict) else None
            if other.get("op") == "add" and isinstance(ins, list) and node_name in ins and len(ins) == 2:
                rest = next(v for v in ins if v != node_name) if ins.count(node_name) == 1 else query
                del block["nodes"][other_name]
                rename_tensor(doc, block, other_name, rest)
        rename_tensor(doc, block, node_name, query)
    memories(doc).pop(name, None)
    drop_dead_nodes(doc)
    return f"remove_cms: `{name}`"


def _unnest(memory: dict) -> None:
    memory["reset"] = "sequence"
    if isinstance(memory.get("init"), dict) and "by" in memory["init"]:
        memory["init"] = {"kind": "learned"}


def nest_levels(doc: dict, rng: random.Random) -> str:
    """Nest two levels: a slower level owns a faster memory's initial state and resets it at
    each of its chunk boundaries (nested CMS, NL eq. 72; knowledge transfer by initialization,
    §3.3 item 4), which gives the faster memory higher-order in-context learning."""
    free = [n for n in _in_context_memories(doc)
            if kind_of(memories(doc)[n].get("reset"), "sequence") != "level"]  # fmt: skip
    name = choose(rng, free, "un-nested in-context memory")
    memory = memories(doc)[name]
    period = every(doc, memory["level"])
    slower = [lv for lv in in_context_levels(doc) if every(doc, lv) > period and every(doc, lv) % period == 0]
    if slower and rng.random() < 0.5:
        owner = choose(rng, slower, "slower level")
    else:
        owner = level_with_period(doc, period * rng.choice((2, 4, 8)), f"{memory['level']}_outer")
    memory["reset"] = {"kind": "level", "level": owner}
    # An initial state that learns in context (eq. 72 proper) is lowered for CMS memories; a
    # parametric memory restarts from the outer level's meta-learned state at each boundary.
    if kind_of(memory.get("init")) == "learned" and is_cms(memory):
        memory["init"] = {"kind": "learned", "by": owner}
    return f"nest_levels: `{owner}` (every {every(doc, owner)}) owns the state of `{name}` (every {period})"


def unnest_levels(doc: dict, rng: random.Random) -> str:
    """Un-nest two levels: a memory stops being re-initialized by a slower level; it starts
    each sequence from the outer level's meta-learned state (sequential CMS, NL eq. 73)."""
    nested = [n for n, m in memories(doc).items()
              if isinstance(m, dict) and kind_of(m.get("reset"), "sequence") == "level"]  # fmt: skip
    name = choose(rng, nested, "nested memory")
    owner = memories(doc)[name]["reset"].get("level")
    _unnest(memories(doc)[name])
    drop_unused_levels(doc)
    return f"unnest_levels: `{name}` no longer reset by `{owner}`"
