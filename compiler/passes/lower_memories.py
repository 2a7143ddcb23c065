"""Pass `lower_memories`: each memory instance's static choices as one frozen `MemoryOptions`.

Everything a memory module or kernel needs to know about the spec is decided here, once: the
rule and retention the kernels implement (DGD with momentum is its own rule, Yaad's Huber with a
norm switch its own objective), the sizes after the feature map, the constants, where each step
size comes from, and which level holds the initial state. Combinations that have no lowering
are rejected here with the position of the YAML that asks for them, so `validate` reports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nestdsl.compiler.plan import MemoryPlan, Plan
from nestdsl.errors import Diagnostic, SpecError
from nestdsl.graph.build import memory_params
from nestdsl.spec.common import Learned
from nestdsl.spec.memory import (
    HuberObjective,
    KLRetention,
    LearnedInit,
    LpObjective,
    LqRetention,
    TaskObjective,
)


@dataclass(frozen=True)
class MemoryOptions:
    """The lowered meaning of one memory instance (printed by `show --after lower_memories`)."""

    structure: str  # matrix | mlp | gated_mlp | cache
    heads: int
    key_dim: int  # what the memory's keys and queries have after the feature map
    value_dim: int
    objective: str  # dot | l2 | lp | huber | huber_norm | task | softmax
    p: float = 3.0  # lp's exponent
    window_delta: float | None = None  # the Huber threshold of an Omega window (one per window)
    rule: str | None = None  # gd | momentum | dgd | dgd_momentum | muon (None: not in context)
    dgd_step: str = "explicit"
    ns_steps: int = 5
    ns_kind: str = "quintic"
    retention: str | None = None  # l2 | kl | lq
    retention_mode: str = "global"
    anchored: bool = False  # l2 retention decays toward the initial state, not toward zero
    q_norm: float = 4.0
    kl_scale: float = 1.0
    lag_token: bool = False  # Memora's lag token (Miras eq. 30): kl retention without a window
    window: int = 1  # Omega rule: tokens each update fits
    window_weighted: bool = False  # the window has a `weight` or `positions` (token weights)
    feature_map: str | None = None  # relu | elu1 | softmax | polynomial | exp (None: identity)
    degree: int | None = None
    # A residual MLP memory with a feature map, `M(x) = x + N(MLP(φ(x)))`: the kernel runs
    # `N(MLP(·))` on φ(k) fitted to `v - k` (`dot`: `v`), reads add the raw query back.
    skip: bool = False
    hidden_dim: int | None = None  # MLP memories: expansion x the key width before the map
    normalize: bool = False
    stop_gradient: bool = False
    init: str = "zeros"  # zeros | identity | learned
    init_gain: float = 1.0  # random initial weights at std init_gain / sqrt(fan_in)
    init_level: str | None = None  # the level that trains (or, in context, updates) the start
    init_every: int | None = None  # the period of `init_level` when it is in context (nested CMS)
    gates: tuple[tuple[str, str], ...] = ()  # (role, source) for every step size and gate
    # Roles whose tensor is per channel, `[heads, value_dim]`: one value per row of the state
    # (Miras §5.4, ATLAS eq. 11's diag(α_t)); every other gate is per head.
    channel_gates: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{self.objective}"]
        if self.rule:
            parts.append(self.rule + (f" ({self.dgd_step})" if self.rule.startswith("dgd") else ""))
        if self.retention:
            parts.append(f"retention {self.retention} {self.retention_mode}"
                         + (" toward the initial state" if self.anchored else "")
                         + (" + lag token" if self.lag_token else ""))  # fmt: skip
        if self.window > 1:
            parts.append(f"window {self.window}")
        if self.feature_map:
            learned = f", gates g_0..g_{self.degree} learned per head" if (
                self.feature_map == "polynomial") else ""  # fmt: skip
            parts.append(f"phi {self.feature_map}" + (
                f"^{self.degree} ({self.key_dim} features{learned})" if self.degree else ""))  # fmt: skip
        if self.skip:
            target = "v" if self.objective == "dot" else "v - k"
            parts.append(f"residual path outside phi (kernel fits N(MLP(phi(k))) to {target})")
        if self.normalize:
            parts.append("normalized")
        if self.stop_gradient:
            parts.append("stop-gradient writes")
        parts.append(f"init {self.init}" + (f" by `{self.init_level}`" if self.init_level else "")
                     + (f" (gain {self.init_gain:g})" if self.init_gain != 1.0 else ""))  # fmt: skip
        parts += [f"{role}={source}" + (" per channel" if role in self.channel_gates else "")
                  for role, source in self.gates]  # fmt: skip
        return ", ".join(parts)


def lower_memories(plan: Plan) -> Plan:
    errors: list[Diagnostic] = []
    for layer in plan.layers:
        for m in layer.memories.values():
            m.options = lower(plan, m, layer.shapes)
            errors += _unlowerable(plan, m)
    if errors:
        raise SpecError(list(dict.fromkeys(errors)))
    plan.done.append("lower_memories")
    return plan


def mapped_dim(kind: str | None, degree: int | None, d: int) -> int:
    """Key size after a feature map: the tensor-power maps (`polynomial`, `exp`) keep every
    unique monomial of degree 0..p once, C(d + p, p) of them (compiler/modules/feature_map.py)."""
    if kind in ("polynomial", "exp"):
        return math.comb(d + degree, degree)
    return d


def channel_gates(m: MemoryPlan, shapes: dict[str, tuple[int, ...]]) -> tuple[str, ...]:
    """The roles whose block tensor has one value per head and value channel (the shapes
    check has accepted only `[heads]` and `[heads, value_dim]`; one head may drop its axis)."""
    wide = {(m.heads, m.value_dim)} | ({(m.value_dim,)} if m.heads == 1 else set())
    if m.value_dim == 1:  # a one-channel gate is the per-head gate
        return ()
    return tuple(p.role for p in memory_params(m.memory)
                 if isinstance(p.value, str) and p.role != "positions"
                 and shapes.get(p.value) in wide)  # fmt: skip


# The widest feature map lowered: beyond it one head's keys alone take megabytes per token.
MAX_FEATURES = 1 << 16


def lower(plan: Plan, m: MemoryPlan, shapes: dict[str, tuple[int, ...]]) -> MemoryOptions:
    mem = m.memory
    obj, rule, ret, fm = mem.objective, mem.rule, mem.retention, mem.feature_map
    rule_kind = None if rule is None else rule.kind
    if rule_kind == "dgd" and rule.momentum is not None:
        rule_kind = "dgd_momentum"
    objective = "huber_norm" if getattr(obj, "switch", None) == "norm" else obj.kind
    window = mem.window.tokens if mem.window is not None else 1
    init_level = None
    if isinstance(mem.init, LearnedInit) or not isinstance(m.every, int):
        init_level = getattr(mem.init, "by", None) or (m.level if not isinstance(m.every, int)
                                                       else plan.outer)  # fmt: skip
    init_every = plan.spec.levels[init_level].every if init_level else None
    mapped = None if fm is None or fm.kind == "identity" else fm.kind
    expansion = getattr(mem.structure, "expansion", None)  # MLP memories
    return MemoryOptions(
        structure=mem.structure.kind,
        heads=m.heads,
        key_dim=mapped_dim(fm.kind if fm else None, fm.degree if fm else None, m.key_dim),
        value_dim=m.value_dim,
        objective=objective,
        p=obj.p if isinstance(obj, LpObjective) else 3.0,
        window_delta=float(obj.delta) if window > 1 and isinstance(obj, HuberObjective) else (
            1.0 if window > 1 else None),  # fmt: skip
        rule=rule_kind,
        dgd_step=getattr(rule, "step", "explicit"),
        ns_steps=getattr(rule, "ns_steps", 5),
        ns_kind=getattr(rule, "ns_kind", "quintic"),
        retention=None if ret is None else ret.kind,
        retention_mode=getattr(ret, "mode", "global"),
        anchored=getattr(ret, "toward", "zero") == "init",
        q_norm=ret.q if isinstance(ret, LqRetention) else 4.0,
        kl_scale=ret.scale if isinstance(ret, KLRetention) else 1.0,
        lag_token=isinstance(ret, KLRetention) and window == 1,
        window=window,
        window_weighted=mem.window is not None and (mem.window.weight, mem.window.positions) != (
            None, None),  # fmt: skip
        feature_map=mapped,
        degree=fm.degree if fm else None,
        skip=mapped is not None and getattr(mem.structure, "residual", False),
        hidden_dim=expansion * m.key_dim if expansion else None,
        normalize=mem.normalize,
        stop_gradient=mem.write == "stop_gradient",
        init=mem.init.kind,
        init_gain=getattr(mem.init, "gain", 1.0),
        init_level=init_level,
        init_every=init_every if isinstance(init_every, int) else None,
        gates=tuple((p.role, _source(p.value)) for p in memory_params(mem)),
        channel_gates=channel_gates(m, shapes),
    )


def _source(value) -> str:
    if isinstance(value, Learned):
        return f"learned({value.init}, per {value.per})"
    return f"`{value}`" if isinstance(value, str) else f"{value:g}"


def _unlowerable(plan: Plan, m: MemoryPlan) -> list[Diagnostic]:
    """What the spec asks of this memory that no kernel or module implements."""
    mem, where = m.memory, ("memories", m.decl)
    errors = []
    task = isinstance(mem.objective, TaskObjective)
    if task:  # eq. 71 sums the chunk's gradients before the step: one value per chunk
        for p in memory_params(mem):
            if isinstance(p.value, str):
                errors.append(Diagnostic(
                    "not-lowered", f"memory `{m.decl}` learns from the task loss, whose chunk "
                    f"gradient is a sum over tokens (NL eq. 71): its `{p.role}` cannot be the "
                    f"per-token tensor `{p.value}`", plan.at(*where, *p.path),
                    "use a constant or `{kind: learned, init: ...}`"))  # fmt: skip
    errors += _channel_unlowerable(plan, m)
    if m.options.key_dim > MAX_FEATURES:
        fm = mem.feature_map
        errors.append(Diagnostic(
            "not-lowered", f"`{fm.kind}` of degree {fm.degree} on keys of width {m.key_dim} has "
            f"{m.options.key_dim} features (C(d + p, p)); nestdsl lowers at most {MAX_FEATURES}",
            plan.at(*where, "feature_map", "degree"), "lower `degree` or the key width"))  # fmt: skip
    errors += _anchored_unlowerable(plan, m)
    if m.options.init_every is not None and not task:
        errors.append(Diagnostic(
            "not-lowered", f"`{m.decl}` takes its initial state from the in-context level "
            f"`{m.options.init_level}`: that nesting (NL eq. 72) is lowered for task-loss (CMS) "
            "memories, whose state learns from the loss the slower level sees",
            plan.at(*where, "init", "by"), "name an `every: step` level in `by:`"))  # fmt: skip
    return errors


def _anchored_unlowerable(plan: Plan, m: MemoryPlan) -> list[Diagnostic]:
    """`retention.toward: init` is lowered on the deep-memory kernel for the gd, momentum and dgd
    rules, global mode, one-token objective, one gate per head (kernels/deep_memory/chunk.py)."""
    o = m.options
    if not o.anchored:
        return []
    why = ((o.objective == "task", "a task-loss memory (its state is its own level's weights)"),
           (o.rule == "muon", "the `muon` rule"),
           (o.retention_mode == "local", "local retention"),
           (o.window > 1 or o.window_weighted, "an Omega window"),
           (bool(o.channel_gates), "per-channel gates"))  # fmt: skip
    return [Diagnostic(
        "not-lowered", f"memory `{m.decl}`: retention toward the initial state is lowered for "
        f"gd, momentum or dgd memories with global retention, one token per update and per-head "
        f"gates, not with {what}", plan.at("memories", m.decl, "retention", "toward"),
        "remove `toward: init`, or use a gd, momentum or dgd rule")  # fmt: skip
        for bad, what in why if bad]


# Per-channel gates are exact when every row of the state (one value channel) follows its own
# scalar-gated recurrence with the same keys; these break that, with the reason.
_CHANNEL_ROLES = ("lr", "momentum", "forget", "log_decay")


def _channel_unlowerable(plan: Plan, m: MemoryPlan) -> list[Diagnostic]:
    o, mem, where = m.options, m.memory, ("memories", m.decl)
    if not o.channel_gates or isinstance(mem.objective, TaskObjective):
        return []
    paths = {p.role: p.path for p in memory_params(mem)}
    first = plan.at(*where, *paths[o.channel_gates[0]])
    why = None
    if o.structure in ("mlp", "gated_mlp"):
        why = (
            f"a `{o.structure}` memory's hidden layer has expansion x dim rows, not one per "
            "value channel, so `diag` over channels names no one update of every layer",
            "use a per-head gate `[heads]`, or a `matrix` memory for per-channel gates",
        )
    elif not isinstance(m.every, int):
        why = (
            f"`{m.decl}` is not updated in context (its level is `every: {m.every}`)",
            "give the gate per head, or drop it",
        )
    elif o.rule == "muon":
        why = (
            "Muon orthogonalizes the whole momentum matrix (ATLAS eq. 32), which mixes the "
            "rows a per-channel gate would keep apart",
            "use a per-head gate with `muon`",
        )
    elif o.retention == "lq":
        why = (
            "lq retention normalizes by the q-norm of the whole matrix (Miras eq. 24), "
            "which couples the rows",
            "use a per-head gate with lq retention",
        )
    elif o.objective == "huber_norm":
        why = (
            "the norm switch of this Huber objective looks at the whole value vector, which "
            "couples the rows",
            "use a per-head gate, or the elementwise Huber objective",
        )
    elif o.normalize:
        why = (
            "the normalizer's key sum is one more value channel that a `[heads, value_dim]` "
            "gate does not cover",
            "use a per-head `lr` with `normalize`",
        )
    if why is not None:
        return [Diagnostic("not-lowered", f"per-channel gates on `{m.decl}`: {why[0]}", first,
                           why[1])]  # fmt: skip
    return [
        Diagnostic("not-lowered", f"`{m.decl}`'s `{role}` is per channel, but {_PER_HEAD[role]}",
                   plan.at(*where, *paths[role]), "give it the shape `[heads]`")  # fmt: skip
        for role in o.channel_gates
        if role not in _CHANNEL_ROLES
    ]


# Why the other gates stay per head.
_PER_HEAD = {
    "delta": "the Huber threshold is lowered per head and token (Miras eqs. 13-16)",
    "weight": "the Omega window's weight γ_i weighs a token's whole loss (ATLAS eq. 9)",
}
