"""The compiler's IR: the checked level graph plus what each pass decides, read by every stage.

A `Plan` starts from a checked spec and its networkx level graph (`nestdsl.graph.build`) and
gains, pass by pass, integer sizes, one `LayerPlan` per block repetition with its tensors'
shapes and time axes, each memory's schedule (chunk, resets, feedback reads), its lowered
options and its kernel, and each layer's step order. `nestdsl validate` runs every pass, so
what validates compiles; the module builder, `nestdsl show` and the parameter count read the
plan and decide nothing themselves. `describe()` is what `nestdsl show SPEC --after PASS` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nestdsl.errors import Position
from nestdsl.spec.memory import Memory
from nestdsl.spec.schema import Block

# What training recomputes in backward (model.py): auto = sequences of at least
# AUTO_RECOMPUTE_FROM tokens (the deep memories' chunk groups, and spans for models with sequential
# segments and no task-loss windows); spans = any length, any model; or a number of tokens per
# span; off = nothing.
RECOMPUTE_MODES = ("auto", "spans", "off")
# What recomputation saves grows with T, what it costs does not, so `auto` leaves short
# sequences alone. At B = 4, d_model 256: Titans MAC's spans cost 1.2x the step for 1.3 GB less
# at T = 512, 1.15x for 6.2 GB at T = 2,048 (at its shipped size and B = 8, 1.7x for 0.08 GB at
# T = 128); titans-lmm's chunk groups 1.32x for 0.8 GB at T = 512, and at T = 2,048 they keep
# it at 2.1 GB instead of 5.7 (docs/benchmarks.md). Muon's chunks recompute at any length
# (memory_deep.RECOMPUTE).
AUTO_RECOMPUTE_FROM = 1024


def check_recompute(value: str) -> str:
    """`value` if it is a recompute mode or a positive number of tokens per span, else
    ValueError (whether the number suits a model is the model's to say)."""
    if value in RECOMPUTE_MODES or (value.isdigit() and int(value) > 0):
        return value
    raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE_MODES)} or a number of "
                     f"tokens per span, got {value!r}")  # fmt: skip


@dataclass
class MemoryPlan:
    """One instance of a declared memory in one layer."""

    name: str  # instance name, e.g. "layer.0.M"
    decl: str  # declared name, e.g. "M"
    memory: Memory
    level: str
    every: int | str
    heads: int
    key_dim: int
    value_dim: int
    writes: tuple[str, ...] = ()  # block tensors its update reads (keys, values, gate tensors)
    # schedule_levels
    chunk: int = 1  # in-context chunk (tokens between boundaries); 1 for step/never levels
    reset_every: int | None = None  # tokens between resets to the initial state, if any
    reads: tuple[str, ...] = ()  # read nodes answered with this memory's update (joint step)
    feedback: tuple[str, ...] = ()  # read nodes answered from the carried state (they feed writes)
    # lower_memories
    options: Any = None  # a frozen `MemoryOptions`
    # pick_kernels
    kernel: str | None = None
    why: str = ""  # why that kernel


@dataclass
class GroupPlan:
    """Memories of one layer that run as one kernel call, their heads side by side."""

    name: str  # e.g. "M_k+M_v+M_eta+M_alpha"
    members: tuple[str, ...]  # declared names, in the order their heads are concatenated
    heads: int  # the call's heads: the members' heads summed
    reads: tuple[tuple[str, ...], ...] = ()  # per joint read, one read node per member
    feedback: tuple[tuple[str, ...], ...] = ()  # per feedback read, one read node per member
    # Every read sees the chunk-start state: a span inside a chunk only keeps its inputs, and
    # the chunk's end (or the end of the call) runs the write once.
    defer: bool = False


@dataclass
class LayerPlan:
    """One repetition of a declared block."""

    name: str  # e.g. "layer.0"
    block_index: int
    block_name: str
    block: Block
    level: str  # the level whose optimizer trains the block's parameters
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per tensor, without B, T
    memories: dict[str, MemoryPlan] = field(default_factory=dict)
    # schedule_levels
    axis: dict[str, str | None] = field(default_factory=dict)  # None or its `with_prefix` node
    steps: list[tuple[str, str]] = field(default_factory=list)  # ("op"|"feedback"|"memory", name)
    segment: int | None = None  # tokens per sequential step when memories feed back; None: all
    segment_why: str = ""
    # Steps of a segmented layer that run once over the whole span after its segments,
    # needed by no step inside them (e.g. Titans MAC's feed-forward), and the values kept from
    # the segments for them and for the block's output.
    after_segments: frozenset[tuple[str, str]] = frozenset()
    kept_from_segments: tuple[str, ...] = ()  # empty when nothing runs after: the output
    # group_memories (steps then name ("group", name) and ("feedback_group", "r1+r2+..."))
    groups: dict[str, GroupPlan] = field(default_factory=dict)
    ungrouped: dict[str, str] = field(default_factory=dict)  # deep memory -> why it runs alone


@dataclass
class Plan:
    checked: Any  # nestdsl.CheckedSpec (its spec, source map and shapes)
    dims: dict[str, int] = field(default_factory=dict)
    d_model: int = 0
    vocab: int = 0
    outer: str | None = None  # trains the embedding, the head and what names no level
    layers: list[LayerPlan] = field(default_factory=list)
    # Tokens per window when in-context memories learn from the task loss (CMS), else None.
    task_window: int | None = None
    # The lcm of the segments and in-context chunks of a model with sequential segments and no
    # task-loss window (training recomputes spans of its multiples, model.py), else None.
    recompute_unit: int | None = None
    # The lcm of the segments and in-context chunks (CMS windows included) of any model: what
    # training recomputes spans of when asked to (`recompute: spans` or a number of tokens).
    span_unit: int | None = None
    done: list[str] = field(default_factory=list)  # passes run so far

    @property
    def spec(self):
        return self.checked.spec

    def at(self, *path) -> Position | None:
        """The YAML position of a spec path (for positioned pass errors)."""
        return self.checked.source.find(tuple(path), key=True)

    def memories(self):
        return [m for layer in self.layers for m in layer.memories.values()]

    def describe(self) -> str:
        from nestdsl.compiler.describe import describe

        return describe(self)
