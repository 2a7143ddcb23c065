"""Outer optimizers: an `every: step` level's update, written as memories of the gradients.

Nested Learning reads an optimizer as a set of associative memories whose context flow is the
gradient stream of the parameters the level owns (NL §4, eqs. 33-53; App. B): momentum is a
memory of gradients with a dot-product objective (eqs. 10-13, 33-34), Adam's two moments are
two such memories at one frequency (eqs. 100-105), delta momentum changes the objective to l2
(eqs. 48-49), deep momentum (DMGD) makes the memory an MLP (eq. 50), Muon maps the memory's
read through Newton-Schulz (eqs. 42-44, 52) and M3 adds a slower momentum (§7.2, Algorithm 1).

`kind: memories` declares such an optimizer in full (`Declaration`: settings, memories, the
update that reads them). The named kinds (`adamw`, `m3`, `delta_momentum`, `sgd_momentum`,
`dmgd`) are shorthands: each is the shipped declaration `specs/optimizers/<name>.yaml` with the
node's fields as its settings (nestdsl/optim/library.py expands them). Every kind also takes
`period` (the level updates every `period` training steps, on the sum of their gradients) and
`schedule` (the level's own learning-rate curve instead of the run's).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StrictInt,
    model_serializer,
    model_validator,
)

from nestdsl.spec.common import Name, Node, shorthand

# A number in a declaration: a constant, a setting's name (`beta1`), an item of a list setting
# (`betas[0]`), or one minus either (`1 - betas[0]`); read from the settings at every update.
Expr = Annotated[
    float | Annotated[str, Field(pattern=r"^\s*(1\s*-\s*)?[A-Za-z_][A-Za-z0-9_]*(\[\d+\])?\s*$")],
    Field(description="a number, a setting (`beta1`, `betas[0]`) or one minus it (`1 - beta1`)"),
]
SettingValue = StrictInt | float | str | list[float]

# ---------------------------------------------------------------- memories of the gradients


class Elementwise(Node):
    """A state shaped like the parameter, read as it is (momentum, Adam's moments)."""

    kind: Literal["elementwise"]


class Preconditioner(Node):
    """A matrix `P` on the parameter's last axis, read as `P g` for each row g of the gradient
    (the preconditioner of NL eqs. 38-41 learnt from the gradient rows)."""

    kind: Literal["matrix"]


class MomentumMLP(Node):
    """A two-layer MLP `m(u) = W2 act(W1 u)` on the gradient's rows, read at the current
    gradient (deep momentum, NL eq. 50). W1 starts random (seeded), W2 at zero."""

    kind: Literal["mlp"]
    hidden: PositiveInt = Field(16, description="width of the hidden layer")
    activation: Literal["tanh", "relu", "gelu", "silu"] = "tanh"
    seed: NonNegativeInt = Field(0, description="seed of W1's initial values")


GradStructure = Annotated[
    Elementwise | Preconditioner | MomentumMLP,
    Field(discriminator="kind"),
    BeforeValidator(shorthand),
]


class GradGD(Node):
    """One gradient step on the memory's objective, `m <- retention m - lr ∇L(m)`."""

    kind: Literal["gd"]
    lr: Expr = 1.0


class GradDGD(Node):
    """The gd step after erasing the memory along the unit gradient ĝ (delta gradient descent,
    NL eqs. 54-57, applied to momentum: eqs. 48-49): `m <- retention m - erase <m, ĝ> ĝ - lr ∇L`."""

    kind: Literal["dgd"]
    lr: Expr = 1.0
    erase: Expr = Field(1.0, description="step of the erase term along ĝ (1: NL's rule, 0: gd)")
    eps: Expr = Field(1e-8, description="ĝ = g / sqrt(||g||² + eps²)")


GradRule = Annotated[GradGD | GradDGD, Field(discriminator="kind"), BeforeValidator(shorthand)]


class GradMemory(Node):
    """One memory of the level's gradient stream; its values are the gradient g."""

    structure: GradStructure
    objective: Literal["dot", "l2"] = Field(
        "dot", description="dot: L = -<m(k), g> (momentum); l2: L = 1/2 ||m(k) - g||²"
    )
    keys: Literal["one", "grad", "unit_grad"] = Field(
        "one",
        description="one: a key-less memory (momentum); grad: keyed by the gradient; unit_grad: "
        "by the gradient over its norm (per row for matrix and mlp memories)",
    )
    rule: GradRule = Field(default_factory=lambda: GradGD(kind="gd"))
    retention: Expr = Field(1.0, description="factor α the state keeps before each write")
    every: Expr = Field(
        1.0,
        description="writes every N updates, the sum of the N previous gradients (M3's slow momentum)",
    )

    @model_validator(mode="after")
    def _fits(self) -> GradMemory:
        if isinstance(self.rule, GradDGD) and self.structure.kind != "elementwise":
            raise ValueError(
                "the `dgd` rule erases along the whole gradient: elementwise memories only"
            )
        if self.keys == "one" and self.structure.kind != "elementwise":
            raise ValueError(
                f"a `{self.structure.kind}` memory is read at the gradient: use `keys: grad`"
            )
        return self


# ---------------------------------------------------------------- the update that reads them


class Term(Node):
    """One memory's read in the update direction: `weight * map(read(memory))`."""

    memory: Name
    weight: Expr = 1.0
    map: Literal["identity", "newton_schulz"] = Field(
        "identity", description="newton_schulz: orthogonalize matrices (Muon, NL eq. 44, 52)"
    )
    ns_steps: Expr = 5.0
    ns_kind: str = Field("quintic", description="quintic, cubic, or the name of a setting")
    debias: bool = Field(False, description="divide by the total weight written (Adam's 1 - β^t)")


class Precondition(Node):
    """Divide the direction by `sqrt(read(memory)) + eps` (or `sqrt(read + eps)`): Adam's V."""

    memory: Name
    eps: Expr = 1e-8
    eps_inside: bool = Field(
        False, description="sqrt(v + eps) (M3) instead of sqrt(v) + eps (Adam)"
    )
    debias: bool = False


def _term(value: Any) -> Any:
    return {"memory": value} if isinstance(value, str) else value


class Update(Node):
    """`p <- p - lr * (sum of the terms) / preconditioner`."""

    direction: list[Annotated[Term, BeforeValidator(_term)]] = Field(min_length=1)
    precondition: Precondition | None = None


class Declaration(Node):
    """The body of a declared optimizer: settings, memories of the gradients, the update."""

    settings: dict[Name, SettingValue] = Field(
        default_factory=dict, description="named numbers the memories and update refer to"
    )
    decoupled: bool = Field(
        True, description="weight decay p <- p (1 - lr wd) (AdamW); false: g <- g + wd p (SGD)"
    )
    memories: dict[Name, GradMemory] = Field(min_length=1)
    update: Update

    @model_validator(mode="after")
    def _names(self) -> Declaration:
        reads = [t.memory for t in self.update.direction]
        if self.update.precondition is not None:
            reads.append(self.update.precondition.memory)
        pre = self.update.precondition
        if pre is not None and pre.memory in self.memories:
            if self.memories[pre.memory].structure.kind != "elementwise":
                raise ValueError(f"`precondition` divides by an elementwise memory; "
                                 f"`{pre.memory}` is not one")  # fmt: skip
        # Every number resolves against the settings (lr and weight_decay may come from the
        # level), to the type its place needs: what validates builds.
        known = {"lr": 1.0, "weight_decay": 0.0, **self.settings}
        for expr, want in _exprs(self):
            value = resolve(expr, known)
            if want == "ns_kind" and value not in ("quintic", "cubic"):
                raise ValueError(f"`{expr}` is {value!r}: Newton-Schulz is `quintic` or `cubic`")
            if want != "ns_kind" and (isinstance(value, (str, list)) or isinstance(value, bool)):
                raise ValueError(f"`{expr}` is {value!r}, not a number")
            if want == "count" and not (float(value) >= 1 and float(value) == int(value)):
                raise ValueError(
                    f"`{expr}` is {value!r}: a count of updates or steps is a whole number >= 1"
                )
        unknown = [n for n in reads if n not in self.memories]
        if unknown:
            raise ValueError(f"the update reads no memory named {', '.join(unknown)}; "
                             f"memories: {', '.join(self.memories)}")  # fmt: skip
        return self


_EXPR = re.compile(r"^\s*(1\s*-\s*)?([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?\s*$")


def resolve(expr, settings: dict):
    """A declaration's number: a constant, `name`, `name[i]` or `1 - (either)`, read from
    `settings`; ValueError naming what is wrong."""
    if not isinstance(expr, str):
        return expr
    match = _EXPR.match(expr)
    if match is None:
        raise ValueError(f"`{expr}` is not a number, a setting or `1 - setting`")
    complement, name, index = match.groups()
    if name not in settings:
        if complement is None and index is None and name in ("quintic", "cubic"):
            return name  # a Newton-Schulz kind written out
        raise ValueError(f"no setting named {name}; settings: {', '.join(sorted(settings))}")
    value = settings[name]
    if index is not None:
        if not isinstance(value, (list, tuple)) or int(index) >= len(value):
            raise ValueError(f"`{expr}`: setting `{name}` = {value!r} has no item {index}")
        value = value[int(index)]
    if complement:
        if isinstance(value, (str, list, tuple)):
            raise ValueError(f"`{expr}`: setting `{name}` = {value!r} is not a number")
        return 1.0 - float(value)
    return value


def _exprs(declaration: Declaration) -> list[tuple]:
    """Every number of a declaration that may name a setting, with what it must be."""
    out = []
    for memory in declaration.memories.values():
        out += [(memory.retention, "number"), (memory.every, "count"), (memory.rule.lr, "number")]
        if isinstance(memory.rule, GradDGD):
            out += [(memory.rule.erase, "number"), (memory.rule.eps, "number")]
    for term in declaration.update.direction:
        out += [(term.weight, "number"), (term.ns_steps, "count"), (term.ns_kind, "ns_kind")]
    if declaration.update.precondition is not None:
        out.append((declaration.update.precondition.eps, "number"))
    return out


class OptimizerFile(Declaration):
    """A file of specs/optimizers/: `nestdsl.optimizer(name_or_path, params, **settings)`."""

    nestdsl: Literal[1]
    optimizer: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")] = Field(
        description="the optimizer's name"
    )
    description: str | None = None


# ---------------------------------------------------------------- a level's optimizer


class LevelSchedule(Node):
    """The level's own learning-rate curve, counted in the level's own updates."""

    kind: Literal["constant", "warmup_cosine"]
    warmup: NonNegativeInt = Field(0, description="updates of linear warmup")
    total: PositiveInt | None = Field(None, description="updates to the floor (warmup_cosine)")
    min_ratio: float = Field(0.1, ge=0.0, le=1.0, description="the floor as a fraction of lr")

    @model_validator(mode="after")
    def _total(self) -> LevelSchedule:
        if self.kind == "warmup_cosine" and (self.total is None or self.total < self.warmup):
            raise ValueError("`warmup_cosine` needs `total` (updates) at least `warmup`")
        return self


class _Outer(Node):
    """Fields every outer optimizer takes. They are left out of the dumped config at their
    defaults, so a level without them records exactly what it did before they existed."""

    period: PositiveInt = Field(
        1, description="the level updates every N training steps, on the sum of their gradients"
    )
    schedule: Annotated[LevelSchedule | None, BeforeValidator(shorthand)] = Field(
        None, description="the level's own lr curve; default: the run's warmup-cosine"
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        if self.period == 1:
            data.pop("period", None)
        if self.schedule is None:
            data.pop("schedule", None)
        return data


class AdamW(_Outer):
    """AdamW, the outer optimizer of every paper's experiments (specs/optimizers/adamw.yaml)."""

    kind: Literal["adamw"]
    lr: PositiveFloat = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0.0)
    eps: PositiveFloat = 1e-8


class M3(_Outer):
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
    momentum_decay: float = Field(
        1.0, ge=0.0, le=1.0, description="M <- d M + beta g (1: as printed)"
    )
    variance_decay: float = Field(
        1.0, ge=0.0, le=1.0, description="V <- d V + beta2 g^2 (1: as printed)"
    )


class DeltaMomentum(_Outer):
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


class SGDMomentum(_Outer):
    """Heavy-ball momentum, a key-less memory of gradients (NL eqs. 10-13, 33-34)."""

    kind: Literal["sgd_momentum"]
    lr: PositiveFloat = 1e-2
    momentum: float = Field(0.9, ge=0.0, le=1.0, description="decay α of the momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="coupled, as torch.optim.SGD: g + wd p")


class DMGD(_Outer):
    """Deep momentum gradient descent (NL eq. 50): the momentum is an MLP of the gradient rows."""

    kind: Literal["dmgd"]
    lr: PositiveFloat = 1e-3
    momentum: float = Field(0.9, ge=0.0, le=1.0, description="retention α of the MLP's weights")
    inner_lr: PositiveFloat = Field(0.1, description="η, the MLP's own step on its objective")
    weight_decay: float = Field(0.0, ge=0.0)


class Declared(_Outer, Declaration):
    """An optimizer declared in place: `lr`, `weight_decay` and a `Declaration`'s body."""

    kind: Literal["memories"]
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(0.0, ge=0.0)


Optimizer = Annotated[
    AdamW | M3 | DeltaMomentum | SGDMomentum | DMGD | Declared, Field(discriminator="kind")
]
# Shorthand kind -> the shipped declaration it expands to (specs/optimizers/<file>.yaml).
SHORTHANDS = {
    "adamw": "adamw",
    "m3": "m3",
    "delta_momentum": "delta-momentum",
    "sgd_momentum": "sgd-momentum",
    "dmgd": "dmgd",
}
