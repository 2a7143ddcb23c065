"""Editing a spec as its YAML document (plain dicts and lists), for the mutation operators.

The operators of `nestdsl explore` change the document a user would write, never the pydantic
objects or the plan, so every candidate is plain YAML that goes through the whole front end
(`nestdsl.check_text`: schema, checks, every compiler pass) exactly as a hand-written spec
would. This file holds what the operators share: which levels run in context, which memories
sit where, which nodes read which memory, fresh names, renaming a tensor everywhere it is
referenced, and removing what nothing uses any more.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import yaml

from nestdsl.graph.build import GATE_FIELDS

# Fields of a memory's rule, retention, objective and window that may name a block tensor
# (a data-dependent step size or gate): the graph's own list, so a new gate is seen here too.
PARAM_FIELDS = GATE_FIELDS


class NotApplicable(Exception):  # noqa: N818 - a verdict, not a failure
    """The operator has nothing to act on in this spec (e.g. no second level to merge into)."""


# ---------------------------------------------------------------- reading the document


def levels(doc: dict) -> dict:
    return doc.setdefault("levels", {})


def memories(doc: dict) -> dict:
    memories_ = doc.get("memories")
    if memories_ is None:
        memories_ = doc["memories"] = {}
    return memories_


def every(doc: dict, level: str):
    value = levels(doc).get(level, {})
    return value.get("every") if isinstance(value, dict) else None


def in_context_levels(doc: dict) -> list[str]:
    """Levels with `every: N` (tokens): the clocks of in-context memories (NL §3.2)."""
    return [name for name in levels(doc) if type(every(doc, name)) is int]


def memories_on(doc: dict, level: str) -> list[str]:
    return [name for name, m in memories(doc).items() if isinstance(m, dict) and m.get("level") == level]


def kind_of(value, default: str | None = None) -> str | None:
    """The `kind:` of a polymorphic node written in full or as shorthand (`objective: l2`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("kind", default)
    return default


def is_cms(memory: dict) -> bool:
    """A continuum-memory block: it learns from the model's own loss (NL eq. 71)."""
    return kind_of(memory.get("objective")) == "task"


def blocks(doc: dict) -> list[dict]:
    return [b for b in doc.get("blocks", []) if isinstance(b, dict) and isinstance(b.get("nodes"), dict)]


def reads_of(doc: dict, memory: str) -> Iterator[tuple[dict, str, dict]]:
    """(block, node name, node) for every `read` of `memory`."""
    for block in blocks(doc):
        for name, node in block["nodes"].items():
            if isinstance(node, dict) and node.get("op") == "read" and node.get("memory") == memory:
                yield block, name, node


def all_names(doc: dict) -> set[str]:
    """Every name a new node, memory or level must not take."""
    names = set(levels(doc)) | set(memories(doc)) | set(doc.get("dims") or {}) | {"x"}
    for block in blocks(doc):
        names |= set(block["nodes"]) | {block.get("input", "x"), block.get("name") or ""}
    return names


def fresh(doc: dict, stem: str) -> str:
    """`stem`, or `stem_2`, `stem_3`, ...: a name nothing in the spec uses yet."""
    taken = all_names(doc)
    if stem not in taken:
        return stem
    n = 2
    while f"{stem}_{n}" in taken:
        n += 1
    return f"{stem}_{n}"


def choose(rng: random.Random, items, what: str):
    """One item, or NotApplicable naming what was missing."""
    items = list(items)
    if not items:
        raise NotApplicable(f"no {what}")
    return items[rng.randrange(len(items))]


def outer_level(doc: dict) -> str | None:
    """The first `every: step` level (it trains the embedding, the head, initial states)."""
    return next((n for n in levels(doc) if every(doc, n) == "step"), None)


# ---------------------------------------------------------------- editing the document


def inputs(node: dict) -> list[str]:
    """Tensor names a node reads."""
    found = []
    for key in ("in", "query", "of"):
        value = node.get(key)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if isinstance(v, str)]
    found += [v for v in node.get("prefix") or [] if isinstance(v, str)]
    return found


def rename_tensor(doc: dict, block: dict, old: str, new: str) -> None:
    """Every reference to tensor `old` in `block` (and in the memories' keys, values and gate
    tensors) now names `new`; the node called `old` itself is left to the caller."""
    for node in block["nodes"].values():
        if not isinstance(node, dict):
            continue
        for key in ("in", "query", "of"):
            if node.get(key) == old:
                node[key] = new
            elif isinstance(node.get(key), list):
                node[key] = [new if v == old else v for v in node[key]]
        if isinstance(node.get("prefix"), list):
            node["prefix"] = [new if v == old else v for v in node["prefix"]]
    if block.get("out") == old:
        block["out"] = new
    for memory in memories(doc).values():
        if not isinstance(memory, dict):
            continue
        for key in ("keys", "values"):
            if memory.get(key) == old:
                memory[key] = new
        for part in ("rule", "retention", "objective", "window"):
            section = memory.get(part)
            if isinstance(section, dict):
                for key in PARAM_FIELDS:
                    if section.get(key) == old:
                        section[key] = new


def tensors_used(doc: dict, block: dict) -> set[str]:
    """Tensors of `block` that something reads: a node, the block's output, a memory's
    keys, values or gates."""
    used = {block.get("out")}
    for node in block["nodes"].values():
        if isinstance(node, dict):
            used |= set(inputs(node))
    for memory in memories(doc).values():
        if not isinstance(memory, dict):
            continue
        used |= {memory.get("keys"), memory.get("values")}
        for part in ("rule", "retention", "objective", "window"):
            section = memory.get(part)
            if isinstance(section, dict):
                used |= {v for k, v in section.items() if k in PARAM_FIELDS and isinstance(v, str)}
    return used


def drop_dead_nodes(doc: dict) -> None:
    """Remove nodes nothing reads, then memories nothing reads, then levels nothing uses,
    until none is left: an operator that bypasses a part leaves no orphans behind."""
    changed = True
    while changed:
        changed = False
        for block in blocks(doc):
            used = tensors_used(doc, block)
            for name in [n for n in block["nodes"] if n not in used]:
                del block["nodes"][name]
                changed = True
        read = {node.get("memory") for b in blocks(doc) for node in b["nodes"].values()
                if isinstance(node, dict) and node.get("op") == "read"}  # fmt: skip
        for name in [m for m in memories(doc) if m not in read]:
            del memories(doc)[name]
            changed = True
    drop_unused_levels(doc)


def drop_unused_levels(doc: dict) -> None:
    """Delete in-context levels no memory runs on and no memory is reset or initialized by."""
    used = set()
    for memory in memories(doc).values():
        if isinstance(memory, dict):
            used.add(memory.get("level"))
            for part in ("init", "reset"):
                section = memory.get(part)
                if isinstance(section, dict):
                    used |= {section.get("by"), section.get("level")}
    used |= {b.get("level") for b in blocks(doc)}
    for name in [n for n in in_context_levels(doc) if n not in used]:
        del levels(doc)[name]


def add_level(doc: dict, stem: str, period: int) -> str:
    """A new in-context level `every: period`, placed before the first `step` level."""
    name = fresh(doc, stem)
    items = list(levels(doc).items())
    at = next((i for i, (n, _) in enumerate(items) if every(doc, n) in ("step", "never")), len(items))
    items.insert(at, (name, {"every": period}))
    doc["levels"] = dict(items)
    return name


def level_with_period(doc: dict, period: int, stem: str) -> str:
    """An existing in-context level of `period`, or a new one."""
    for name in in_context_levels(doc):
        if every(doc, name) == period:
            return name
    return add_level(doc, stem, period)


# ---------------------------------------------------------------- text


def dump(doc: dict, header: str = "") -> str:
    """The document as spec YAML, in its own key order, with `header` as leading comments."""
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join(lines + [body])


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-") or "spec"
