"""Check `references`: every name points at something that exists, and every memory is used."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from nestdsl.checks.context import CheckContext
from nestdsl.errors import Diagnostic
from nestdsl.graph.build import memory_params
from nestdsl.spec.ops import DropPrefix, Read, WithPrefix, inputs_of


def _hint(name: str, options) -> str | None:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else None


def check_references(ctx: CheckContext) -> Iterator[Diagnostic]:
    spec = ctx.spec
    yield from unused_dims(ctx)
    used_memories: set[str] = set()
    block_names: dict[str, int] = {}
    for index, bname, block in ctx.blocks():
        base = ("blocks", index)
        if bname in block_names:  # shapes and graph nodes are keyed by block name
            yield ctx.error("duplicate-name", f"block {index} has the same name `{bname}` as "
                            f"block {block_names[bname]}", base + ("name",),
                            "give each block its own `name:`")  # fmt: skip
        block_names.setdefault(bname, index)
        tensors = {block.input, *block.nodes}
        if block.input in block.nodes:
            yield ctx.error("duplicate-name", f"node `{block.input}` shadows the block input",
                            base + ("nodes", block.input), "rename the node", key=True)  # fmt: skip
        if block.out not in tensors:
            yield ctx.error("dangling-ref", f"block output `{block.out}` is not a node",
                            base + ("out",), _hint(block.out, tensors))  # fmt: skip
        if block.level is not None and block.level not in spec.levels:
            yield ctx.error("dangling-ref", f"unknown level `{block.level}`", base + ("level",),
                            _hint(block.level, spec.levels))  # fmt: skip
        for name, op in block.nodes.items():
            path = base + ("nodes", name)
            for i, src in enumerate(inputs_of(op)):
                if src not in tensors:
                    yield ctx.error("dangling-ref", f"`{name}` reads `{src}`, which is not defined",
                                    _input_path(op, path, i), _hint(src, tensors))  # fmt: skip
                elif src == name:
                    yield ctx.error("flow-cycle", f"`{name}` reads itself", path)
            if isinstance(op, Read):
                used_memories.add(op.memory)
                if op.memory not in spec.memories:
                    yield ctx.error("dangling-ref", f"unknown memory `{op.memory}`",
                                    path + ("memory",), _hint(op.memory, spec.memories))  # fmt: skip
                else:
                    yield from _memory_tensors(ctx, op.memory, tensors, index)
            if isinstance(op, WithPrefix) and op.segment and op.segment not in spec.levels:
                yield ctx.error("dangling-ref", f"unknown level `{op.segment}`",
                                path + ("segment",), _hint(op.segment, spec.levels))  # fmt: skip
            if isinstance(op, DropPrefix):
                target = block.nodes.get(op.of)
                if not isinstance(target, WithPrefix):
                    yield ctx.error("dangling-ref", f"`of: {op.of}` must name a `with_prefix` node",
                                    path + ("of",), _hint(op.of, [n for n, o in block.nodes.items()
                                                                  if isinstance(o, WithPrefix)]))  # fmt: skip
    for name, memory in spec.memories.items():
        path = ("memories", name)
        if memory.level not in spec.levels:
            yield ctx.error("dangling-ref", f"unknown level `{memory.level}`", path + ("level",),
                            _hint(memory.level, spec.levels))  # fmt: skip
        for field in ("init", "reset"):
            level = getattr(getattr(memory, field), "by" if field == "init" else "level", None)
            key = "by" if field == "init" else "level"
            if level is not None and level not in spec.levels:
                yield ctx.error("dangling-ref", f"unknown level `{level}`", path + (field, key),
                                _hint(level, spec.levels))  # fmt: skip
        if name not in used_memories:
            yield ctx.error("unused-memory", f"memory `{name}` is never read", path,
                            "read it with `{op: read, memory: " + name + ", query: ...}` "
                            "or remove it", key=True)  # fmt: skip


def unused_dims(ctx: CheckContext) -> Iterator[Diagnostic]:
    """A dim no size expression names is a warning, like an unused level or node."""
    words: set[str] = set()
    stack = [ctx.spec.model_dump(exclude={"dims"})]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, str):
            words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", value))
    for name in ctx.spec.dims:
        if name not in words:
            yield ctx.warning("unused-dim", f"dim `{name}` is used by no size",
                              ("dims", name), "remove it or use it in a size")  # fmt: skip


def _memory_tensors(ctx: CheckContext, name: str, tensors: set[str], index: int):
    """A memory's keys, values and gate tensors must exist in every block that reads it."""
    memory = ctx.spec.memories[name]
    refs = [(("keys",), memory.keys), (("values",), memory.values)]
    refs += [(p.path, p.value) for p in memory_params(memory) if isinstance(p.value, str)]
    for sub, tensor in refs:
        if tensor is not None and tensor not in tensors:
            block = ctx.spec.blocks[index].name or f"block{index}"
            yield ctx.error("dangling-ref",
                            f"memory `{name}` uses `{tensor}`, which block `{block}` does not define",
                            ("memories", name) + sub, _hint(tensor, tensors))  # fmt: skip


def _input_path(op, path: tuple, i: int) -> tuple:
    if isinstance(op, Read):
        return path + ("query",)
    if isinstance(op, WithPrefix):
        return path + (("in",) if i == 0 else ("prefix", i - 1))
    value = getattr(op, "in_", None)
    return path + (("in", i) if isinstance(value, list) else ("in",))
