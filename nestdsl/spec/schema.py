"""The top level of a spec: version, dims, levels (clocks), memories, blocks, embedding, head.

Levels are the clocks of Nested Learning (§3.2): `every: N` tokens for in-context learning (N is
the chunk), `every: step` for the outer optimizer, `every: never` for frozen parts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt

from nestdsl.spec.common import Dim, Name, Node
from nestdsl.spec.memory import Memory
from nestdsl.spec.ops import Op
from nestdsl.spec.optimizer import (  # noqa: F401 - the outer optimizers, re-exported
    DMGD,
    M3,
    AdamW,
    Declared,
    DeltaMomentum,
    Optimizer,
    SGDMomentum,
)

VERSION = 1


class Level(Node):
    """A clock: in-context every N tokens, the outer optimizer step, or never (frozen)."""

    every: Annotated[StrictInt, Field(gt=0)] | Literal["step", "never"]  # `true` is not 1
    optimizer: Optimizer | None = Field(None, description="only for `every: step` levels")
    description: str | None = None


# ---------------------------------------------------------------- model wiring


class Embed(Node):
    """Token embedding; its output is the input `x` of the first block."""

    vocab: Dim
    dim: Dim


class Block(Node):
    """A layer's graph of ops, repeated `repeat` times; each repetition owns its memories."""

    name: Name | None = None
    repeat: Dim = 1
    input: Name = "x"
    level: Name | None = Field(
        None, description="level that trains this block's parameters; default: the outermost"
    )
    nodes: dict[Name, Op] = Field(min_length=1)
    out: Name


class Head(Node):
    """Final norm and projection to the vocabulary."""

    norm: Literal["rmsnorm", "layernorm", "none"] = "rmsnorm"
    tied: bool = Field(False, description="reuse the embedding matrix as the output projection")


class Spec(Node):
    """A whole architecture, as a nesting of optimization problems."""

    nestdsl: Literal[1] = Field(description="the spec-language version")
    name: Name | Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    dims: dict[Name, StrictInt] = Field(default_factory=dict)
    levels: dict[Name, Level] = Field(min_length=1)
    memories: dict[Name, Memory] = Field(default_factory=dict)
    embed: Embed
    blocks: list[Block] = Field(min_length=1)
    head: Head = Field(default_factory=Head)
