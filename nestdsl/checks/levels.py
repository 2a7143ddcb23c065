"""Check `levels`: clocks are ordered and nested consistently (NL §3.2, Definition 2-3).

- a spec needs an outermost trained level (`every: step` with an optimizer);
- optimizers live on `every: step` levels only;
- every parameter belongs to a level (blocks name one when there are several step levels);
- a level that owns (initializes or resets) a memory is slower than the memory's own level,
  and an in-context chunk period divides the period of the level nesting it;
- a level nothing refers to is reported as a warning (a trained level other than the first,
  which owns the embedding, the head and unnamed blocks, trains nothing unless named).
"""

from __future__ import annotations

from collections.abc import Iterator

from nestdsl.checks.context import CheckContext
from nestdsl.errors import Diagnostic
from nestdsl.spec.memory import LearnedInit, LevelReset
from nestdsl.spec.ops import WithPrefix

_RANK = {"step": 1, "never": 2}  # step and never are slower than any in-context period


def slowness(every) -> tuple[int, int]:
    """Sort key: larger is slower. In-context periods first, then step, then never."""
    return (0, every) if isinstance(every, int) else (_RANK[every], 0)


def check_levels(ctx: CheckContext) -> Iterator[Diagnostic]:
    spec = ctx.spec
    steps = [n for n, lv in spec.levels.items() if lv.every == "step"]
    trained = [n for n in steps if spec.levels[n].optimizer is not None]
    for name, level in spec.levels.items():
        path = ("levels", name)
        if level.optimizer is not None and level.every != "step":
            yield ctx.error("optimizer-placement",
                            f"level `{name}` has an optimizer but updates `every: {level.every}`",
                            path + ("optimizer",),
                            "only `every: step` levels run an outer optimizer")  # fmt: skip
        if level.every == "step" and level.optimizer is None:
            yield ctx.error("optimizer-missing", f"level `{name}` (every: step) has no optimizer",
                            path, "add `optimizer: {kind: adamw, lr: 3.0e-4}`", key=True)  # fmt: skip
    if not trained:
        yield ctx.error("no-outer-level", "the spec has no outermost trained level", ("levels",),
                        "add a level `pretrain: {every: step, optimizer: {kind: adamw}}`",
                        key=True)  # fmt: skip
    if len(steps) > 1:
        for index, _, block in ctx.blocks():
            if block.level is None:
                yield ctx.error("params-without-level",
                                f"block parameters belong to no level: there are {len(steps)} "
                                f"`every: step` levels ({', '.join(steps)})",
                                ("blocks", index), "say `level: <name>` on the block",
                                key=True)  # fmt: skip
    for index, _, block in ctx.blocks():
        if block.level in spec.levels and spec.levels[block.level].every not in ("step", "never"):
            yield ctx.error("params-without-level",
                            f"block parameters cannot live on in-context level `{block.level}`",
                            ("blocks", index, "level"),
                            "parameters are trained by a `step` level or frozen (`never`)")  # fmt: skip
    yield from _nesting(ctx, steps)
    yield from _unused_levels(ctx)


def _nesting(ctx: CheckContext, steps: list[str]) -> Iterator[Diagnostic]:
    spec = ctx.spec
    for name, memory in spec.memories.items():
        own = spec.levels.get(memory.level)
        if own is None:
            continue
        owners = []
        if isinstance(memory.init, LearnedInit):
            by = memory.init.by or (steps[0] if len(steps) == 1 else None)
            if by is None:
                yield ctx.error("params-without-level",
                                f"the learned initial state of `{name}` belongs to no level",
                                ("memories", name, "init"),
                                "say `init: {kind: learned, by: <level>}`")  # fmt: skip
            else:
                owners.append((by, ("memories", name, "init", "by"), "initial state"))
        if isinstance(memory.reset, LevelReset):
            owners.append((memory.reset.level, ("memories", name, "reset", "level"), "reset"))
        for owner, path, what in owners:
            outer = spec.levels.get(owner)
            if outer is None:
                continue
            if owner == memory.level and not isinstance(own.every, int) and what != "reset":
                continue  # a memory off context: its own level trains (or freezes) its weights
            if slowness(outer.every) <= slowness(own.every):
                yield ctx.error("level-order",
                                f"level `{owner}` (every: {outer.every}) owns the {what} of "
                                f"`{name}` on level `{memory.level}` (every: {own.every}), "
                                "but it is not slower",
                                path, "a slower level may own a faster one's state, "
                                "never the other way round")  # fmt: skip
            elif isinstance(own.every, int) and isinstance(outer.every, int):
                if outer.every % own.every:
                    yield ctx.error("chunk-divisibility",
                                    f"period {own.every} of `{memory.level}` does not divide "
                                    f"period {outer.every} of `{owner}`",
                                    path, f"use a multiple of {own.every} for `{owner}`")  # fmt: skip
            if what == "reset" and not isinstance(outer.every, int):
                yield ctx.error("level-order",
                                f"reset level `{owner}` must be an in-context level (every: N)",
                                path, "use `reset: sequence` or `reset: never` instead")  # fmt: skip


def _unused_levels(ctx: CheckContext) -> Iterator[Diagnostic]:
    spec = ctx.spec
    used = {m.level for m in spec.memories.values()}
    used |= {getattr(m.init, "by", None) for m in spec.memories.values()}
    used |= {getattr(m.reset, "level", None) for m in spec.memories.values()}
    used |= {b.level for b in spec.blocks}
    used |= {op.segment for b in spec.blocks for op in b.nodes.values()
             if isinstance(op, WithPrefix)}  # fmt: skip
    trained = [n for n, lv in spec.levels.items() if lv.every == "step" and lv.optimizer]
    for name, level in spec.levels.items():
        if name in used:
            continue
        if level.every != "step":
            yield ctx.warning("unused-level", f"level `{name}` is used by nothing",
                              ("levels", name), "remove it or put a memory on it")  # fmt: skip
        elif trained and name != trained[0]:  # the first trained level owns what no one names
            yield ctx.warning("unused-level",
                              f"level `{name}` trains nothing: its optimizer would own no parameter",
                              ("levels", name), "name it in a block's `level:` or an `init: {by:}`, "
                              "or remove it")  # fmt: skip
