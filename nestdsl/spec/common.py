"""Building blocks shared by every schema model: closed models, names, dims and parameter sources."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

# A name of a dim, level, memory or block tensor.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

# A size: an integer, a name from `dims:`, or an arithmetic expression of both ("4 * d_model").
# (Strict: YAML `true` is a boolean, never the size 1.)
Dim = Annotated[
    StrictInt | Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_ +\-*/()]+$")],
    Field(description="an integer, a name from `dims`, or an expression like `4 * d_model`"),
]


class Node(BaseModel):
    """Base of every spec object: closed (unknown keys are errors) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Learned(Node):
    """A step size or gate learned by the outer level (one value per head, or one in all)."""

    kind: Literal["learned"]
    init: float = Field(description="initial value (before any transform)")
    per: Literal["head", "scalar"] = "head"


# Where a step size or gate comes from: a constant, a learned value, or the name of a block
# tensor (a data-dependent projection, or the read of another memory: self-modification).
Param = Annotated[
    float | Name | Learned,
    Field(description="a constant, `{kind: learned, init: ...}`, or the name of a block tensor"),
]


def shorthand(value: Any) -> Any:
    """Allow `objective: l2` for `objective: {kind: l2}`."""
    return {"kind": value} if isinstance(value, str) else value
