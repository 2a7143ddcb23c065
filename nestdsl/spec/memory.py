"""Associative memories: the optimization boxes of Nested Learning (Definition 1; Miras §3).

A memory is `M* = argmin_M L(M(k); v)` solved online by an update rule on its level's clock.
Each choice the papers make is a `kind:`: the structure (matrix, MLP, cache), the objective
(attentional bias), the rule, the retention, the feature map, the initial state and resets.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from nestdsl.spec.common import Dim, Name, Node, Param, shorthand

# ---------------------------------------------------------------- structure

# The deep memory's output norm floor. A layer norm makes the last matrix scale-invariant, so
# retention (weight decay toward zero) shrinks the weights without forgetting and raises the
# effective step as 1 / ||W||^2: with LayerNorm's usual 1e-5 every shipped Titans spec had an
# exploding outer gradient at init past ~256 tokens (titans-lmm at d_model 256: 4e10 at T=512,
# NaN at 2048). A floor near the values' scale caps the amplification (docs/architectures.md).
NORM_EPS = 0.1


class MatrixStructure(Node):
    """A linear memory per head: `M(k) = W k` (linear attention, DeltaNet, Titans-linear)."""

    kind: Literal["matrix"]
    heads: Dim = 1
    key_dim: Dim
    value_dim: Dim


class MLPStructure(Node):
    """A deep memory per head: `M(x) = x + N(W_L σ(… σ(W_1 x)))` (Titans LMM, Hope eq. 89)."""

    kind: Literal["mlp"]
    heads: Dim = 1
    dim: Dim
    depth: PositiveInt = 2
    expansion: PositiveInt = 4
    residual: bool = True
    activation: Literal["gelu", "silu", "relu", "tanh", "identity"] = "gelu"
    norm: Literal["none", "layernorm"] = "none"
    norm_eps: PositiveFloat = Field(
        NORM_EPS,
        description="the norm's variance floor: N(z) = (z - mean) / sqrt(var + eps). It bounds "
        "how much the norm amplifies a small output (1/sqrt(eps)); with retention shrinking "
        "the weights, a tiny floor turns the inner dynamics chaotic (docs/architectures.md)",
    )


class GatedMLPStructure(Node):
    """A gated deep memory: `M(x) = x + W_1 (σ(W_2 x) ⊙ W_3 x)` (Atlas++, eq. 43)."""

    kind: Literal["gated_mlp"]
    heads: Dim = 1
    dim: Dim
    expansion: PositiveInt = 4
    residual: bool = True
    activation: Literal["gelu", "silu", "relu", "tanh"] = "silu"


class CacheStructure(Node):
    """A non-parametric memory that keeps every (k, v) pair: softmax attention (NL eq. 62-63)."""

    kind: Literal["cache"]
    heads: Dim = 1
    key_dim: Dim
    value_dim: Dim
    window: PositiveInt | None = Field(None, description="sliding window length; none = full")
    sinks: NonNegativeInt = Field(
        0, description="first positions that stay visible under a window (SW-Attn*'s persistent tokens)"
    )


Structure = Annotated[
    MatrixStructure | MLPStructure | GatedMLPStructure | CacheStructure,
    Field(discriminator="kind"),
]

# ---------------------------------------------------------------- objective (attentional bias)


class DotObjective(Node):
    """`L = -<M(k), v>`: Hebbian memories, linear attention (NL eq. 14-18)."""

    kind: Literal["dot"]


class L2Objective(Node):
    """`L = 1/2 ||M(k) - v||^2`: the delta rule, Titans (Titans eq. 12)."""

    kind: Literal["l2"]


class LpObjective(Node):
    """`L = ||M(k) - v||_p^p` (Miras eq. 10-11; Moneta uses p = 3)."""

    kind: Literal["lp"]
    p: float = Field(gt=1.0)


class HuberObjective(Node):
    """Huber loss with threshold delta (Miras eqs. 13-16, 26): `switch: coordinate` takes the l2
    or the l1 branch for each coordinate of the error, `switch: norm` on the norm of the whole
    error, as Yaad's update (eq. 26) does."""

    kind: Literal["huber"]
    delta: Param = 1.0
    switch: Literal["coordinate", "norm"] = "coordinate"


class TaskObjective(Node):
    """The model's own loss through backprop: the continuum memory system (NL eq. 71)."""

    kind: Literal["task"]


class SoftmaxObjective(Node):
    """The Nadaraya-Watson solution of an l2 regression: softmax attention on a cache (eq. 62)."""

    kind: Literal["softmax"]


Objective = Annotated[
    DotObjective | L2Objective | LpObjective | HuberObjective | TaskObjective | SoftmaxObjective,
    Field(discriminator="kind"),
    BeforeValidator(shorthand),
]

# ---------------------------------------------------------------- update rule


class GDRule(Node):
    """`M_t = M_{t-1} - lr_t ∇L` (one gradient step per token; NL eq. 19)."""

    kind: Literal["gd"]
    lr: Param = 1.0


class MomentumRule(Node):
    """`S_t = momentum_t S_{t-1} - lr_t ∇L; M_t = M_{t-1} + S_t` (Titans eq. 10)."""

    kind: Literal["momentum"]
    lr: Param
    momentum: Param


class DGDRule(Node):
    """Delta gradient descent: `M_t = M_{t-1}(I - lr_t k k^T) - lr_t ∇L` (NL eq. 57, 88); with
    `momentum`, that step drives a momentum `S_t = momentum_t S_{t-1} - lr_t (...)`,
    `M_t = M_{t-1} + S_t` (the momentum of Hope's ablation)."""

    kind: Literal["dgd"]
    lr: Param
    momentum: Param | None = None
    # `explicit`: the step lr_t as printed in eq. 88. `proximal`: the exact minimizer of eq. 57,
    # step lr_t / (1 + lr_t ||a_t||^2) per layer, stable whatever the size of the layer input.
    step: Literal["explicit", "proximal"] = Field(
        "explicit", description="`proximal`: lr / (1 + lr ||a||^2), the exact argmin of NL eq. 57"
    )


class MuonRule(Node):
    """Momentum orthogonalized by Newton-Schulz: `M_t = M_{t-1} - lr NS_k(S_t)` (Atlas eq. 32)."""

    kind: Literal["muon"]
    lr: Param
    momentum: Param
    ns_steps: PositiveInt = 5
    ns_kind: Literal["quintic", "cubic"] = "quintic"  # Muon's polynomial or NL eq. 44's


Rule = Annotated[GDRule | MomentumRule | DGDRule | MuonRule, Field(discriminator="kind")]

# ---------------------------------------------------------------- retention


class L2Retention(Node):
    """Decay: the state is scaled by `r_t = 1 - forget_t`, or by `r_t = exp(log_decay_t)`.

    `global` (Titans eq. 13, Miras's global retention): `M_t = r_t M_{t-1} + update`, the update's
    gradient taken at the undecayed chunk-start state. `local` (Gated DeltaNet; Miras's local
    retention `||M - r_t M_{t-1}||^2`): decay first, then the gradient step at the decayed state.
    """

    kind: Literal["l2"]
    mode: Literal["global", "local"] = "global"
    forget: Param | None = Field(None, description="forget gate in [0, 1] (Titans α_t)")
    log_decay: Param | None = Field(None, description="log of the decay factor, <= 0 (GDN g_t)")
    # `init`: decay toward the memory's initial state M_0 instead of toward zero,
    # `M_t = M_0 + r_t (M_{t-1} - M_0) + update` (the regularizer ||M - M_0||^2 in Miras's
    # terms). Behind an output norm, decay toward zero shrinks the weights without forgetting
    # and lets the inner step grow without bound (docs/architectures.md, "The norm's floor").
    toward: Literal["zero", "init"] = Field("zero", description="what the state decays toward")

    @model_validator(mode="after")
    def _one_gate(self) -> L2Retention:
        if (self.forget is None) == (self.log_decay is None):
            raise ValueError("give exactly one of `forget` or `log_decay`")
        return self


class KLRetention(Node):
    """KL retention: `W_t = c softmax(α_t log W_{t-1} - η_t ∇L)` (Miras eq. 27; Memora)."""

    kind: Literal["kl"]
    forget: Param = 0.0
    scale: PositiveFloat = 1.0


class LqRetention(Node):
    """l_q normalization: `W_t = A_t / ||A_t||_q^{q-2}` (Miras eq. 24-25; Moneta)."""

    kind: Literal["lq"]
    q: float = Field(4.0, ge=2.0)
    forget: Param = 0.0


Retention = Annotated[L2Retention | KLRetention | LqRetention, Field(discriminator="kind")]

# ---------------------------------------------------------------- feature map, init, reset


class FeatureMap(Node):
    """φ applied to keys and queries before the memory sees them (ATLAS §3, eqs. 19-26).

    `polynomial` is ATLAS's φ_p with learnable coefficients (a learned Taylor approximation of
    exp, `φ(q)·φ(k) = Σ_{i≤p} a_i (q·k)^i`, a_i starting at 1/i!); `exp` is DeepTransformers'
    φ* truncated at `degree` (fixed a_i = 1/i!). On a residual MLP memory the map goes inside
    the memory: `M(x) = x + N(MLP(φ(x)))`."""

    kind: Literal["identity", "relu", "elu1", "softmax", "polynomial", "exp"]
    degree: PositiveInt | None = Field(
        None, description="p, the highest power (for `polynomial` and `exp` only, required there)"
    )


class ZerosInit(Node):
    kind: Literal["zeros"]


class IdentityInit(Node):
    """Start as the identity map (matrix memories with key_dim = value_dim)."""

    kind: Literal["identity"]


class LearnedInit(Node):
    """The initial state is a parameter of a slower level (meta-learned; NL eq. 28)."""

    kind: Literal["learned"]
    by: Name | None = Field(None, description="the owning level; default: the outermost")
    gain: PositiveFloat = Field(
        1.0,
        description="an MLP memory's initial weights are drawn with std gain / sqrt(fan_in); "
        "1 is variance-preserving (kl logits need more spread: docs/evaluation.md, memora)",
    )


Init = Annotated[
    ZerosInit | IdentityInit | LearnedInit, Field(discriminator="kind"), BeforeValidator(shorthand)
]


class SequenceReset(Node):
    """Back to the initial state at every new sequence (the usual training setting)."""

    kind: Literal["sequence"]


class NeverReset(Node):
    """Never reset: continual learning across sequences."""

    kind: Literal["never"]


class LevelReset(Node):
    """Reset at every chunk boundary of a slower level (nested CMS, NL eq. 72)."""

    kind: Literal["level"]
    level: Name


Reset = Annotated[
    SequenceReset | NeverReset | LevelReset, Field(discriminator="kind"), BeforeValidator(shorthand)
]

# ---------------------------------------------------------------- the Omega window


class Window(Node):
    """The Omega rule (Atlas eq. 9): every update fits the last `tokens` tokens,
    `min_M sum_{i=t-c+1..t} γ_i^(t) l(M; k_i, v_i)`; `tokens: 1` is the online objective.
    `γ_i^(t) = weight_i * positions_t[t - i]`: a weight per token, times a weight per window
    position that the updating token t chooses (ATLAS: "input-dependent hard gates that can
    prune tokens from the window")."""

    tokens: PositiveInt = Field(description="c, the number of tokens each update fits")
    weight: Param | None = Field(None, description="γ_i in [0, 1], per token (default 1)")
    positions: Param | None = Field(
        None,
        description="ω_t[t - i] in [0, 1], per token t and window position t - i = 0..c-1: a "
        "block tensor [heads, c], or learned per head and position (default 1)",
    )


# ---------------------------------------------------------------- the memory


class Memory(Node):
    """One optimization box: structure, level, context flow, objective, rule, retention."""

    structure: Structure
    level: Name = Field(description="the level whose clock updates this memory")
    keys: Name | None = Field(None, description="block tensor the memory learns keys from")
    values: Name | None = Field(None, description="block tensor the memory learns values from")
    objective: Objective
    rule: Rule | None = None
    retention: Retention | None = None
    feature_map: Annotated[FeatureMap | None, BeforeValidator(shorthand)] = Field(
        None, description="φ on keys and queries"
    )
    window: Window | None = Field(
        None, description="Omega rule: each update's objective sums a sliding window of tokens"
    )
    normalize: bool = Field(
        False,
        description="linear attention's normalizer: reads divide by φ(q)·Σφ(k) (Katharopoulos)",
    )
    write: Literal["differentiable", "stop_gradient"] = Field(
        "differentiable",
        description="whether the outer level backpropagates through this memory's writes",
    )
    init: Init = Field(default_factory=lambda: ZerosInit(kind="zeros"))
    reset: Reset = Field(default_factory=lambda: SequenceReset(kind="sequence"))
    description: str | None = None
