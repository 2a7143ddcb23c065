"""Block wiring: the per-layer graph of tensor operations that feeds and reads memories.

Every node names its output tensor (the key under `nodes:`). `in:` names input tensors: the
block input (`x` by default), another node, or a tensor of an earlier line. A memory is read by
a `read` node; it learns from the tensors its own `keys:`/`values:` name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from nestdsl.spec.common import Dim, Name, Node

UNARY = (
    "silu", "gelu", "relu", "sigmoid", "logsigmoid", "softplus", "tanh", "l2norm", "neg",
)  # fmt: skip
# Post-ops allowed in a `then:` chain: cheap, per-position, shape-preserving (short_conv mixes
# the last few positions causally). `mamba_decay` is the log-decay of Mamba2 and Gated DeltaNet,
# `g = -exp(A) * softplus(y + dt_bias)` with a learned A and dt_bias per channel of the last axis
# (initialised as those papers do: A ~ U(1, 16), softplus(dt_bias) log-uniform in [1e-3, 0.1]),
# so a decay gate exp(g) starts near 1 (keep) instead of exp(logsigmoid(0)) = 0.5.
PostOp = Literal[
    "silu", "gelu", "relu", "sigmoid", "logsigmoid", "softplus", "tanh", "l2norm", "neg",
    "short_conv", "rmsnorm", "mamba_decay",
]  # fmt: skip


class BiasInit(Node):
    """A learned bias that starts at `init` rather than 0: where a gate starts (e.g. a forget
    gate `sigmoid(x W + b)` near 0 with `init: -4`), as Mamba and Gated DeltaNet initialize
    their decays."""

    init: float


class Linear(Node):
    """`y = x W (+ b)`; `out` is a size or a list of sizes (`[n_heads, d_head]` splits heads).
    With `rank: r`, `W = W_down W_up` (W_down [d_in, r], W_up [r, out]): the low-rank
    projections of Miras §5.4's channel-wise gates (rank 32 or 64)."""

    op: Literal["linear"]
    in_: Name = Field(alias="in")
    out: Dim | Annotated[list[Dim], Field(min_length=1)]  # `[]` would be a shapeless tensor
    rank: Dim | None = Field(
        None, description="r: factor W as W_down [d_in, r] W_up [r, out] (r (d_in + out) weights)"
    )
    bias: bool | BiasInit = Field(False, description="`true`, or `{init: b}` to start at b")
    then: list[PostOp] = Field(
        default_factory=list,
        description=(
            "post-ops applied in order; `mamba_decay` gives the log-decay "
            "`-exp(A) softplus(y + dt_bias)` of Mamba2 / Gated DeltaNet (learned A, dt_bias)"
        ),
    )


class Norm(Node):
    """RMSNorm or LayerNorm over the last (feature) axis, with a learned gain."""

    op: Literal["rmsnorm", "layernorm"]
    in_: Name = Field(alias="in")


class Unary(Node):
    """An elementwise function (or `l2norm` over the feature axis)."""

    op: Literal[UNARY]  # type: ignore[valid-type]
    in_: Name = Field(alias="in")


class Scale(Node):
    """Multiply by a constant: caps a gate, e.g. an inner step size `0.02 * sigmoid(...)`."""

    op: Literal["scale"]
    in_: Name = Field(alias="in")
    by: float


class ShortConv(Node):
    """A causal depthwise convolution over time (window 4 in Titans, Hope, Miras)."""

    op: Literal["short_conv"]
    in_: Name = Field(alias="in")
    kernel: PositiveInt = 4


class Mul(Node):
    """Elementwise product: gates (`y ⊗ M(x)` in Titans MAG, SwiGLU)."""

    op: Literal["mul"]
    in_: list[Name] = Field(alias="in", min_length=2, max_length=2)


class Add(Node):
    """Elementwise sum: residual connections."""

    op: Literal["add"]
    in_: list[Name] = Field(alias="in", min_length=2)


class Read(Node):
    """Query a memory. `order` says which state answers (NL §8, concept 16)."""

    op: Literal["read"]
    memory: Name
    query: Name
    order: Literal["write_then_read", "read_then_write", "chunk_start"] = Field(
        "write_then_read",
        description=(
            "write_then_read: o_t = M_t(q_t); read_then_write: o_t = M_{t-1}(q_t); "
            "chunk_start: o_t = the state at the last chunk boundary of the memory's level"
        ),
    )


class Rope(Node):
    """Rotary position embedding on a `[heads, dim]` tensor (Transformer++)."""

    op: Literal["rope"]
    in_: Name = Field(alias="in")
    base: float = 10000.0


class Persistent(Node):
    """`tokens` learned, input-independent vectors (Titans persistent memory, eq. 19)."""

    op: Literal["persistent"]
    tokens: Dim
    dim: Dim


class WithPrefix(Node):
    """Prepend tensors along time: once per sequence, or per chunk of `segment`'s level (MAC)."""

    op: Literal["with_prefix"]
    in_: Name = Field(alias="in")
    prefix: list[Name] = Field(min_length=1)
    segment: Name | None = Field(None, description="a level: prefix every chunk of its period")


class DropPrefix(Node):
    """Remove the positions a `with_prefix` node added, back to the original time axis."""

    op: Literal["drop_prefix"]
    in_: Name = Field(alias="in")
    of: Name = Field(description="the `with_prefix` node whose prefix is dropped")


class Aggregate(Node):
    """Combine parallel branches: sum, mean, or a learned weighted sum (NL eq. 74)."""

    op: Literal["aggregate"]
    in_: list[Name] = Field(alias="in", min_length=2)
    mode: Literal["sum", "mean", "learned"] = "learned"


Op = Annotated[
    Linear | Norm | Unary | Scale | ShortConv | Mul | Add | Read | Rope | Persistent
    | WithPrefix | DropPrefix | Aggregate,
    Field(discriminator="op"),
]


def per_position(op: Node) -> bool:
    """Whether an op computes each position from that position's inputs alone (no time
    mixing, no position, no carried state): it gives the same numbers on a whole span as on
    its pieces."""
    if isinstance(op, Linear):
        return "short_conv" not in op.then
    return isinstance(op, Norm | Unary | Scale | Mul | Add | Aggregate)


def inputs_of(op: Node) -> list[str]:
    """The tensor names an op reads (not memories or levels)."""
    if isinstance(op, Read):
        return [op.query]
    if isinstance(op, WithPrefix):
        return [op.in_, *op.prefix]
    if isinstance(op, DropPrefix):
        return [op.in_]
    value = getattr(op, "in_", None)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
