"""The compiler's working object: what each pass reads, fills in, and prints.

A `Plan` starts as a checked spec and gains, pass by pass, resolved sizes, expanded layers,
each memory's schedule and kernel. `describe()` is what `nestdsl show SPEC --after PASS` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nestdsl.spec.memory import Memory
from nestdsl.spec.schema import Block


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
    chunk: int = 1  # in-context chunk (tokens between boundaries); 1 for step/never levels
    reset_every: int | None = None  # tokens between resets to the initial state, if any
    kernel: str | None = None  # chosen by `pick_kernels`
    why: str = ""  # why that kernel


@dataclass
class LayerPlan:
    """One repetition of a declared block."""

    name: str  # e.g. "layer.0"
    block_index: int
    block_name: str
    block: Block
    memories: dict[str, MemoryPlan] = field(default_factory=dict)
    segment: int | None = None  # tokens per sequential step when memories feed back; None: all


@dataclass
class Plan:
    checked: Any  # nestdsl.CheckedSpec
    dims: dict[str, int] = field(default_factory=dict)
    d_model: int = 0
    vocab: int = 0
    layers: list[LayerPlan] = field(default_factory=list)
    # Tokens per window when in-context memories learn from the task loss (CMS), else None.
    task_window: int | None = None
    done: list[str] = field(default_factory=list)  # passes run so far

    @property
    def spec(self):
        return self.checked.spec

    def shape(self, layer: LayerPlan, tensor: str) -> tuple[int, ...]:
        return self.checked.shapes[(layer.block_name, tensor)]

    def describe(self) -> str:
        lines = [f"plan for `{self.spec.name}` after: {', '.join(self.done) or '(nothing)'}"]
        if "resolve_dims" in self.done:
            lines.append(f"  dims: {self.dims}  (d_model={self.d_model}, vocab={self.vocab})")
        if "expand_blocks" in self.done:
            for layer in self.layers:
                seg = f", sequential every {layer.segment} tokens" if layer.segment else ""
                lines.append(f"  {layer.name} (block `{layer.block_name}`{seg})")
                for m in layer.memories.values():
                    lines.append("    " + _memory_line(m, self.done))
        if "schedule_levels" in self.done and self.task_window:
            lines.append(f"  task-loss window: {self.task_window} tokens")
        return "\n".join(lines)


def _memory_line(m: MemoryPlan, done: list[str]) -> str:
    st = m.memory.structure
    text = (f"{m.name}: {st.kind} [{m.heads} heads, {m.key_dim} -> {m.value_dim}], "
            f"objective {m.memory.objective.kind}, level `{m.level}` (every {m.every})")  # fmt: skip
    if "schedule_levels" in done:
        text += f", chunk {m.chunk}"
        if m.reset_every:
            text += f", reset every {m.reset_every}"
    if m.kernel:
        text += f", kernel {m.kernel} ({m.why})"
    return text
