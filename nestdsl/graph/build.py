"""Build the level graph (the IR every later stage reads) from a schema-valid spec.

Nodes (attribute `kind`): `level`, `memory`, `op`, `tensor`; each carries `src`, its YAML
position. Edges (attribute `type`, also the multigraph key):
- `data`: tensor -> op (consumed) and op -> tensor (produced);
- `read`: memory -> read op;
- `context`: tensor -> memory, `role` keys/values (what the memory learns from, NL Def. 3);
- `gate`: tensor -> memory, `role` lr/momentum/forget/log_decay/delta/weight (data-dependent step sizes);
- `generation`: memory -> memory, when a read of one produces another's context or gates
  (self-modification, Hope §8);
- `member`: memory -> level (the clock that updates it);
- `nesting`: level -> memory, a slower level owning the memory's initial state (NL eq. 28),
  `role` init or reset;
- `trains`: level -> op, the level whose optimizer trains the op's parameters.
Blocks are not expanded here: one declared block is one set of op nodes (expansion is a pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from nestdsl.errors import Position
from nestdsl.spec.loader import SourceMap
from nestdsl.spec.memory import Memory
from nestdsl.spec.ops import Read, inputs_of
from nestdsl.spec.schema import Spec

GATE_FIELDS = ("lr", "momentum", "forget", "log_decay", "delta", "weight", "positions")


def level_id(name: str) -> str:
    return f"level:{name}"


def memory_id(name: str) -> str:
    return f"memory:{name}"


def op_id(block: str, name: str) -> str:
    return f"op:{block}/{name}"


def tensor_id(block: str, name: str) -> str:
    return f"tensor:{block}/{name}"


def block_name(spec: Spec, index: int) -> str:
    return spec.blocks[index].name or f"block{index}"


@dataclass
class MemoryParam:
    """A step size or gate of a memory, with the schema path it was declared at."""

    role: str
    value: object
    path: tuple


def memory_params(memory: Memory) -> list[MemoryParam]:
    """Every Param-valued field of a memory's rule, retention, objective and window."""
    out = []
    for part in ("rule", "retention", "objective", "window"):
        sub = getattr(memory, part)
        if sub is None:
            continue
        for role in GATE_FIELDS:
            if role in type(sub).model_fields and getattr(sub, role) is not None:
                out.append(MemoryParam(role, getattr(sub, role), (part, role)))
    return out


def write_sources(memory: Memory) -> list[tuple[str, str]]:
    """(role, block tensor) for everything a memory's update reads: its keys, its values and
    its data-dependent step sizes and gates (the memory's context flow, NL Def. 3)."""
    flows = [(role, t) for role, t in (("keys", memory.keys), ("values", memory.values)) if t]
    return flows + [(p.role, p.value) for p in memory_params(memory) if isinstance(p.value, str)]


def outer_level(spec: Spec) -> str | None:
    """The first declared `every: step` level: it trains the embedding, the head, and every
    parameter that names no level (the levels check makes blocks name one when there are
    several `every: step` levels)."""
    return next((n for n, lv in spec.levels.items() if lv.every == "step"), None)


def build_graph(spec: Spec, source: SourceMap) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph(name=spec.name)

    def at(path: tuple) -> Position | None:
        return source.find(path, key=True)

    for name, level in spec.levels.items():
        g.add_node(level_id(name), kind="level", name=name, every=level.every,
                   src=at(("levels", name)))  # fmt: skip
    for name, memory in spec.memories.items():
        g.add_node(memory_id(name), kind="memory", name=name, spec=memory,
                   src=at(("memories", name)))  # fmt: skip
        if memory.level in spec.levels:
            g.add_edge(memory_id(name), level_id(memory.level), key="member", type="member")
        init_by = getattr(memory.init, "by", None)
        if memory.init.kind == "learned" and init_by is None:
            init_by = outer_level(spec)
        if init_by in spec.levels:
            g.add_edge(level_id(init_by), memory_id(name), key="nesting", type="nesting",
                       role="init")  # fmt: skip
        reset_level = getattr(memory.reset, "level", None)
        if reset_level in spec.levels:
            g.add_edge(level_id(reset_level), memory_id(name), key="nesting", type="nesting",
                       role="reset")  # fmt: skip

    g.add_node("op:embed", kind="op", name="embed", block=None, spec=spec.embed,
               src=at(("embed",)))  # fmt: skip
    for index in range(len(spec.blocks)):
        _add_block(g, spec, index, at)
    g.add_node("op:head", kind="op", name="head", block=None, spec=spec.head,
               src=at(("head",)) or at(("blocks",)))  # fmt: skip
    return g


def _add_block(g: nx.MultiDiGraph, spec: Spec, index: int, at) -> None:
    block = spec.blocks[index]
    bname = block_name(spec, index)
    base = ("blocks", index)
    g.add_node(tensor_id(bname, block.input), kind="tensor", name=block.input, block=bname,
               is_input=True, src=at(base + ("input",)) or at(base))  # fmt: skip
    for name, op in block.nodes.items():
        g.add_node(op_id(bname, name), kind="op", name=name, block=bname, spec=op,
                   src=at(base + ("nodes", name)))  # fmt: skip
        g.add_node(tensor_id(bname, name), kind="tensor", name=name, block=bname,
                   is_input=False, src=at(base + ("nodes", name)))  # fmt: skip
        g.add_edge(op_id(bname, name), tensor_id(bname, name), key="data", type="data")
    for name, op in block.nodes.items():
        for source_name in inputs_of(op):
            if g.has_node(tensor_id(bname, source_name)):
                g.add_edge(tensor_id(bname, source_name), op_id(bname, name), key="data",
                           type="data")  # fmt: skip
        if isinstance(op, Read) and op.memory in spec.memories:
            g.add_edge(memory_id(op.memory), op_id(bname, name), key="read", type="read")
    owner = block.level or outer_level(spec)
    if owner in spec.levels:
        for name in block.nodes:
            g.add_edge(level_id(owner), op_id(bname, name), key="trains", type="trains")
    for mem_name in _memories_read(block):
        memory = spec.memories.get(mem_name)
        if memory is None:
            continue
        for role, tensor in write_sources(memory):
            edge_type = "context" if role in ("keys", "values") else "gate"
            if g.has_node(tensor_id(bname, tensor)):
                g.add_edge(tensor_id(bname, tensor), memory_id(mem_name), key=f"{edge_type}:{role}",
                           type=edge_type, role=role, block=bname)  # fmt: skip
                for producer in _producing_memories(g, spec, bname, tensor):
                    g.add_edge(memory_id(producer), memory_id(mem_name), key=f"generation:{role}",
                               type="generation", role=role)  # fmt: skip


def _memories_read(block) -> list[str]:
    return list(dict.fromkeys(op.memory for op in block.nodes.values() if isinstance(op, Read)))


def _producing_memories(g: nx.MultiDiGraph, spec: Spec, bname: str, tensor: str) -> set[str]:
    """Memories whose reads feed `tensor` directly, walking upstream until a read or an input."""
    found: set[str] = set()
    seen: set[str] = set()
    stack = [tensor]
    block = next(b for i, b in enumerate(spec.blocks) if block_name(spec, i) == bname)
    while stack:
        name = stack.pop()
        if name in seen or name not in block.nodes:
            continue
        seen.add(name)
        op = block.nodes[name]
        if isinstance(op, Read):
            found.add(op.memory)
            continue
        stack.extend(inputs_of(op))
    return found
