"""The top level of a spec: version, dims, levels (clocks), memories, blocks, embedding, head.

Levels are the clocks of Nested Learning (§3.2): `every: N` tokens for in-context learning (N is
the chunk), `every: step` for the outer optimizer, `every: never` for frozen parts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, StrictInt

from nestdsl.spec.common import Dim, Name, Node
from nestdsl.spec.memory import Memory
from nestdsl.spec.ops import Op

VERSION = 1

# ---------------------------------------------------------------- outer optimizers


class AdamW(Node):
    """AdamW, the outer optimizer of every paper's experiments."""

    kind: Literal["adamw"]
    lr: PositiveFloat = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0.0)
    eps: PositiveFloat = 1e-8


class M3(Node):
    """Multi-scale Momentum Muon (NL §7.2, Algorithm 1): fast and slow momenta + Adam's V."""

    kind: Literal["m3"]
    lr: PositiveFloat = 3e-4
    betas: tuple[float, float, float] = Field((0.9, 0.999, 0.9), description="β1, β2, β3")
    alpha: float = Field(1.0, ge=0.0, description="weight of the slow momentum")
    frequency: PositiveInt = Field(8, description="steps between slow-momentum updates (f)")
    ns_steps: PositiveInt = 5
    ns_kind: Literal["quintic", "cubic"] = "quintic"
    weight_decay: float = Field(0.0, ge=0.0)
    eps: PositiveFloat = 1e-8
    # As printed the momenta and V are plain sums (1.0); below 1 they decay before each update,
    # which damps the frictionless heavy ball the printed algorithm is (docs/training.md).
    momentum_decay: float = Field(1.0, ge=0.0, le=1.0, description="M <- d M + beta g (1: as printed)")
    variance_decay: float = Field(1.0, ge=0.0, le=1.0, description="V <- d V + beta2 g^2 (1: as printed)")


class DeltaMomentum(Node):
    """Momentum with an l2 (delta-rule) objective (NL eq. 48-49): erase along g, then add g."""

    kind: Literal["delta_momentum"]
    lr: PositiveFloat = 3e-4
    momentum: float = Field(0.9, ge=0.0, le=1.0, description="decay α of the momentum")
    # The delta rule's step size on the erase term `<m, ĝ> ĝ` (ĝ the unit gradient): 1 is NL's
    # rule, 0 is heavy-ball momentum; the steady state along g is |g| / (1 - α + forget).
    forget: float = Field(
        1.0, ge=0.0, le=1.0, description="step size of the erase term: 1 delta rule, 0 heavy ball"
    )
    weight_decay: float = Field(0.0, ge=0.0)


Optimizer = Annotated[AdamW | M3 | DeltaMomentum, Field(discriminator="kind")]


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
