"""The coverage table of issue 8: one case per schema field and enum value (see test_coverage.py).

Each case names a small base spec (below), `before` overrides that set up the reference model
(e.g. pick another enum value) and `variant` overrides that switch the construct on, applied
after `before`. `other` builds the variant from another base text, for constructs that only
exist together (a prefix needs its persistent tokens and its drop). The expected outcome:

- `differs`:  logits or carried state on fixed tokens differ (the reference's weights loaded
              into the variant wherever names and shapes match, so only the construct changes);
- `init`:     the initial parameters differ (same seed, nothing loaded): initialization fields;
- `trains`:   after a few outer-optimizer steps the logits differ (optimizer settings, frozen
              levels, stop-gradient writes, learned initial states that start equal);
- `learned`:  a `{kind: learned, init: c}` step size or gate computes what the constant `c`
              does, and after a few outer steps it no longer does (it is a trained parameter);
- `rejected`: `check_text` raises a SpecError with the case's diagnostic `code` among its
              errors, every one at a position.

`GRID` (at the end) puts each memory construct on each kind of memory; there either outcome
passes: the model changes, or validate rejects the construct at a position.
"""

from __future__ import annotations

from dataclasses import dataclass

# A matrix memory (the delta rule) on a per-token level; `chunk` and `slow` are spare clocks.
MATRIX = """
nestdsl: 1
name: cov
dims: {vocab: 32, d_model: 16, n_heads: 2, d_head: 8}
levels:
  token: {every: 1}
  chunk: {every: 8}
  slow: {every: 16}
  pretrain: {every: step, optimizer: {kind: adamw, lr: 1.0e-2}}
memories:
  M:
    structure: {kind: matrix, heads: n_heads, key_dim: d_head, value_dim: d_head}
    level: token
    keys: k
    values: v
    objective: l2
    rule: {kind: gd, lr: beta}
embed: {vocab: vocab, dim: d_model}
blocks:
  - nodes:
      h: {op: rmsnorm, in: x}
      q: {op: linear, in: h, out: [n_heads, d_head], then: [l2norm]}
      k: {op: linear, in: h, out: [n_heads, d_head], then: [l2norm]}
      v: {op: linear, in: h, out: [n_heads, d_head]}
      beta: {op: linear, in: h, out: [n_heads], then: [sigmoid]}
      o: {op: read, memory: M, query: q}
      y: {op: linear, in: o, out: d_model}
      x1: {op: add, in: [x, y]}
    out: x1
head: {norm: rmsnorm}
"""

# A deep (MLP) memory on a chunked level, with data-dependent step size, momentum and forget gate.
DEEP = """
nestdsl: 1
name: cov-deep
dims: {vocab: 32, d_model: 16, n_heads: 2, d_head: 8}
levels:
  chunk: {every: 8}
  pretrain: {every: step, optimizer: {kind: adamw, lr: 1.0e-2}}
memories:
  M:
    structure: {kind: mlp, heads: n_heads, dim: d_head, expansion: 2}
    level: chunk
    keys: k
    values: v
    objective: l2
    rule: {kind: gd, lr: lr}
    init: {kind: learned}                 # an all-zero MLP has zero gradients: it never learns
embed: {vocab: vocab, dim: d_model}
blocks:
  - nodes:
      h: {op: rmsnorm, in: x}
      q: {op: linear, in: h, out: [n_heads, d_head], then: [l2norm]}
      k: {op: linear, in: h, out: [n_heads, d_head], then: [l2norm]}
      v: {op: linear, in: h, out: [n_heads, d_head]}
      lr0: {op: linear, in: h, out: [n_heads], then: [sigmoid]}
      lr: {op: scale, in: lr0, by: 0.5}
      mom: {op: linear, in: h, out: [n_heads], then: [sigmoid]}
      fg0: {op: linear, in: h, out: [n_heads], then: [sigmoid]}
      fg: {op: scale, in: fg0, by: 0.2}
      o: {op: read, memory: M, query: q}
      y: {op: linear, in: o, out: d_model}
      x1: {op: add, in: [x, y]}
    out: x1
head: {norm: rmsnorm}
"""

# Softmax attention: a cache memory.
CACHE = """
nestdsl: 1
name: cov-cache
dims: {vocab: 32, d_model: 16, n_heads: 2, d_head: 8}
levels:
  token: {every: 1}
  chunk: {every: 8}
  pretrain: {every: step, optimizer: {kind: adamw, lr: 1.0e-2}}
memories:
  A:
    structure: {kind: cache, heads: n_heads, key_dim: d_head, value_dim: d_head}
    level: token
    keys: k
    values: v
    objective: softmax
embed: {vocab: vocab, dim: d_model}
blocks:
  - nodes:
      h: {op: rmsnorm, in: x}
      q: {op: linear, in: h, out: [n_heads, d_head]}
      k: {op: linear, in: h, out: [n_heads, d_head]}
      v: {op: linear, in: h, out: [n_heads, d_head]}
      o: {op: read, memory: A, query: q}
      y: {op: linear, in: o, out: d_model}
      x1: {op: add, in: [x, y]}
    out: x1
head: {norm: rmsnorm}
"""

# The cache with two persistent tokens prepended and dropped again (Titans MAG's wiring).
PREFIX = CACHE.replace(
    "      h: {op: rmsnorm, in: x}\n",
    "      p: {op: persistent, tokens: 2, dim: d_model}\n"
    "      s: {op: with_prefix, in: x, prefix: [p]}\n"
    "      h: {op: rmsnorm, in: s}\n",
).replace(
    "      y: {op: linear, in: o, out: d_model}\n",
    "      od: {op: drop_prefix, in: o, of: s}\n      y: {op: linear, in: od, out: d_model}\n",
)

# A CMS memory: an MLP trained in context by the model's own loss (NL eq. 71).
CMS = """
nestdsl: 1
name: cov-cms
dims: {vocab: 32, d_model: 16}
levels:
  cms: {every: 8}
  pretrain: {every: step, optimizer: {kind: adamw, lr: 1.0e-2}}
memories:
  C:
    structure: {kind: mlp, dim: d_model, expansion: 2, residual: false}
    level: cms
    objective: task
    rule: {kind: gd, lr: 0.1}
    init: {kind: learned}
embed: {vocab: vocab, dim: d_model}
blocks:
  - nodes:
      h: {op: rmsnorm, in: x}
      c: {op: read, memory: C, query: h, order: chunk_start}
      x1: {op: add, in: [x, c]}
    out: x1
head: {norm: rmsnorm}
"""

BASES = {"matrix": MATRIX, "deep": DEEP, "cache": CACHE, "prefix": PREFIX, "cms": CMS}


@dataclass(frozen=True)
class Case:
    base: str
    variant: tuple[str, ...]
    outcome: str = "differs"
    before: tuple[str, ...] = ()
    other: str | None = None  # the variant's base text, when it is not `base`
    code: str | None = None  # `rejected`: the diagnostic code that must be among the errors


def case(base: str, *variant: str, outcome: str = "differs", before=(), other=None) -> Case:
    return Case(base, tuple(variant), outcome, tuple(before), other)


N = "blocks.0.nodes"  # the block's nodes, for overrides
MEM = "memories.M"
OPT = "levels.pretrain.optimizer"
MATRIX_STRUCT = "{kind: matrix, heads: n_heads, key_dim: d_head, value_dim: d_head}"


def inserted(op: str) -> tuple[str, ...]:
    """Overrides that put `z = op(y)` between the memory read's projection and the residual."""
    return (f"{N}.z={op}", f"{N}.x1.in=[x, z]")


def rejected(code: str, base: str, *variant: str, before=()) -> Case:
    """`validate` refuses the construct with diagnostic `code` (a wrong size, a missing rule)."""
    return Case(base, tuple(variant), "rejected", tuple(before), None, code)


def trains(base: str, *variant: str, before=()) -> Case:
    return case(base, *variant, outcome="trains", before=before)


def optimizer(kind: str, *variant: str) -> Case:
    """An outer-optimizer setting: the same spec trained a few steps with and without it."""
    return trains(
        "matrix",
        *variant,
        before=(
            f"{OPT}={{kind: {kind}, frequency: 2}}" if kind == "m3" else f"{OPT}={{kind: {kind}}}",
        ),
    )


# An outer optimizer declared as memories of the gradients (nestdsl/spec/optimizer.py): a
# momentum `m`, and `v`, `w` keyed by the gradient (always >= 0, so they can precondition).
DECLARED = ("{kind: memories, lr: 0.01, memories: {m: {structure: elementwise}, "
            "v: {structure: elementwise, keys: grad}, w: {structure: elementwise, keys: grad, "
            "retention: 0.5}}, update: {direction: [{memory: m}]}}")
D_M = f"{OPT}.memories.m"
D_U = f"{OPT}.update"
COSINE = "{kind: warmup_cosine, warmup: 1, total: 3}"
MLP_MEMORY = (f"{D_M}.structure={{kind: mlp}}", f"{D_M}.keys=grad")
PRECONDITIONED = (f"{D_U}.precondition={{memory: v}}",)


def declared(*variant: str, before=()) -> Case:
    """A setting of a declared optimizer: trained a few steps with and without it."""
    return trains("matrix", *variant, before=(f"{OPT}={DECLARED}", *before))


def learned(base: str, path: str, value: float, before=()) -> Case:
    """A step size or gate as `{kind: learned, init: value}` against the constant `value`."""
    return Case(base, (f"{path}={{kind: learned, init: {value}}}",), "learned",
                (*before, f"{path}={value}"))  # fmt: skip


def enum_cases(item: str, base: str, path: str, values, fmt=str, before=()) -> dict[str, Case]:
    """One case per value of a Literal: the reference takes the next value, the variant this one."""
    out = {}
    for i, value in enumerate(values):
        other = values[(i + 1) % len(values)]
        out[f"{item}={value}"] = case(
            base, f"{path}={fmt(value)}", before=(*before, f"{path}={fmt(other)}")
        )
    return out


UNARY = ["silu", "gelu", "relu", "sigmoid", "logsigmoid", "softplus", "tanh", "l2norm", "neg"]
POSTOPS = [*UNARY, "short_conv", "rmsnorm", "mamba_decay"]

LEARNED_INIT = f"{MEM}.init={{kind: learned}}"  # a deep memory cannot start at zero

# A table: one line per construct where it fits, so the formatter leaves it as written.
# fmt: off
CASES: dict[str, Case] = {
    # ------------------------------------------------------------ the spec, levels, wiring
    "Spec.nestdsl": rejected("version", "matrix", "nestdsl=2"),
    "Spec.dims": case("matrix", "dims.d_head=4"),
    "Level.every": case("matrix", "levels.token.every=4"),
    "Level.every=step": trains(
        "matrix", "levels.extra={every: step, optimizer: {kind: adamw, lr: 1.0e-2}}",
        before=("levels.extra={every: never}", "blocks.0.level=extra"),
    ),
    "Level.every=never": trains(
        "matrix", "levels.extra={every: never}",
        before=("levels.extra={every: step, optimizer: {kind: adamw, lr: 1.0e-2}}",
                "blocks.0.level=extra"),
    ),
    "Embed.vocab": case("matrix", "embed.vocab=48"),
    "Embed.dim": rejected("dim-mismatch", "matrix", "embed.dim=8"),
    "Block.repeat": case("matrix", "blocks.0.repeat=2"),
    "Block.input": rejected("dangling-ref", "matrix", "blocks.0.input=z"),
    "Block.level": trains("matrix", "blocks.0.level=extra", before=("levels.extra={every: never}",)),
    "Block.out": case("matrix", "blocks.0.out=h"),
    **enum_cases("Head.norm", "matrix", "head.norm", ["rmsnorm", "layernorm", "none"]),
    "Head.tied": case("matrix", "head.tied=true"),
    # ------------------------------------------------------------ outer optimizers (3 steps)
    "AdamW.kind": trains("matrix", f"{OPT}={{kind: adamw}}", before=(f"{OPT}={{kind: m3}}",)),
    "AdamW.lr": optimizer("adamw", f"{OPT}.lr=0.05"),
    "AdamW.betas": optimizer("adamw", f"{OPT}.betas=[0.5, 0.6]"),
    "AdamW.weight_decay": optimizer("adamw", f"{OPT}.weight_decay=0.9"),
    "AdamW.eps": optimizer("adamw", f"{OPT}.eps=0.01"),
    "M3.kind": trains("matrix", f"{OPT}={{kind: m3}}"),
    "M3.lr": optimizer("m3", f"{OPT}.lr=0.05"),
    "M3.betas": optimizer("m3", f"{OPT}.betas=[0.5, 0.6, 0.7]"),
    "M3.alpha": optimizer("m3", f"{OPT}.alpha=3.0"),
    "M3.frequency": optimizer("m3", f"{OPT}.frequency=1"),
    "M3.ns_steps": optimizer("m3", f"{OPT}.ns_steps=1"),
    **{f"M3.ns_kind={kind}": optimizer("m3", f"{OPT}.ns_kind={kind}", f"{OPT}.ns_steps=2")
       for kind in ("quintic", "cubic")},
    "M3.weight_decay": optimizer("m3", f"{OPT}.weight_decay=0.9"),
    "M3.eps": optimizer("m3", f"{OPT}.eps=0.01"),
    "M3.momentum_decay": optimizer("m3", f"{OPT}.momentum_decay=0.5"),
    "M3.variance_decay": optimizer("m3", f"{OPT}.variance_decay=0.5"),
    "DeltaMomentum.kind": trains("matrix", f"{OPT}={{kind: delta_momentum}}"),
    "DeltaMomentum.lr": optimizer("delta_momentum", f"{OPT}.lr=0.05"),
    "DeltaMomentum.momentum": optimizer("delta_momentum", f"{OPT}.momentum=0.3"),
    "DeltaMomentum.forget": optimizer("delta_momentum", f"{OPT}.forget=0.0"),
    "DeltaMomentum.weight_decay": optimizer("delta_momentum", f"{OPT}.weight_decay=0.9"),
    # ------------------------------------------------------------ levels every k steps, own schedules
    **{f"{kind}.period": optimizer(key, f"{OPT}.period=2")
       for kind, key in (("AdamW", "adamw"), ("M3", "m3"), ("DeltaMomentum", "delta_momentum"),
                         ("SGDMomentum", "sgd_momentum"), ("DMGD", "dmgd"))},
    **{f"{kind}.schedule": optimizer(key, f"{OPT}.schedule={{kind: constant, warmup: 2}}")
       for kind, key in (("AdamW", "adamw"), ("M3", "m3"), ("DeltaMomentum", "delta_momentum"),
                         ("SGDMomentum", "sgd_momentum"), ("DMGD", "dmgd"))},
    "LevelSchedule.kind=constant": trains("matrix", f"{OPT}.schedule={{kind: constant, warmup: 2}}",
                                          before=(f"{OPT}={{kind: adamw, lr: 0.01, schedule: {COSINE}}}",)),
    "LevelSchedule.kind=warmup_cosine": trains("matrix", f"{OPT}.schedule={COSINE}",
                                               before=(f"{OPT}={{kind: adamw, lr: 0.01, schedule: {{kind: constant}}}}",)),
    "LevelSchedule.warmup": trains("matrix", f"{OPT}.schedule.warmup=2",
                                   before=(f"{OPT}={{kind: adamw, lr: 0.01, schedule: {{kind: constant}}}}",)),
    "LevelSchedule.total": trains("matrix", f"{OPT}.schedule.total=2",
                                  before=(f"{OPT}={{kind: adamw, lr: 0.01, schedule: {COSINE}}}",)),
    "LevelSchedule.min_ratio": trains("matrix", f"{OPT}.schedule.min_ratio=0.9",
                                      before=(f"{OPT}={{kind: adamw, lr: 0.01, schedule: {COSINE}}}",)),
    # ------------------------------------------------------------ shipped optimizer kinds
    "SGDMomentum.kind": trains("matrix", f"{OPT}={{kind: sgd_momentum}}"),
    "SGDMomentum.lr": optimizer("sgd_momentum", f"{OPT}.lr=0.05"),
    "SGDMomentum.momentum": optimizer("sgd_momentum", f"{OPT}.momentum=0.3"),
    "SGDMomentum.weight_decay": optimizer("sgd_momentum", f"{OPT}.weight_decay=0.9"),
    "DMGD.kind": trains("matrix", f"{OPT}={{kind: dmgd}}"),
    "DMGD.lr": optimizer("dmgd", f"{OPT}.lr=0.05"),
    "DMGD.momentum": optimizer("dmgd", f"{OPT}.momentum=0.3"),
    "DMGD.inner_lr": optimizer("dmgd", f"{OPT}.inner_lr=1.0"),
    "DMGD.weight_decay": optimizer("dmgd", f"{OPT}.weight_decay=0.9"),
    # ------------------------------------------------------------ optimizers declared as memories
    "Declared.kind": trains("matrix", f"{OPT}={DECLARED}"),
    "Declared.lr": declared(f"{OPT}.lr=0.05"),
    "Declared.weight_decay": declared(f"{OPT}.weight_decay=0.5"),
    "Declared.decoupled": declared(f"{OPT}.decoupled=false", before=(f"{OPT}.weight_decay=0.5",)),
    "Declared.settings": declared(f"{OPT}.settings={{r: 0.2}}",
                                  before=(f"{OPT}.settings={{r: 0.9}}", f"{D_M}.retention=r")),
    "Declared.memories": declared(f"{OPT}.memories={{m: {{structure: elementwise, keys: grad}}, "
                                  "v: {structure: elementwise, keys: grad}, w: {structure: elementwise}}"),
    "Declared.update": declared(f"{OPT}.update={{direction: [{{memory: v}}]}}"),
    "Declared.period": declared(f"{OPT}.period=2"),
    "Declared.schedule": declared(f"{OPT}.schedule={{kind: constant, warmup: 2}}"),
    "GradMemory.structure": declared(f"{D_M}.structure=matrix", f"{D_M}.keys=grad"),
    **{f"GradMemory.objective={o}": declared(f"{D_M}.objective={o}", before=(f"{D_M}.objective={p}",))
       for o, p in (("dot", "l2"), ("l2", "dot"))},
    **{f"GradMemory.keys={k}": declared(f"{D_M}.keys={k}", before=(f"{D_M}.keys={p}",))
       for k, p in (("one", "grad"), ("grad", "unit_grad"), ("unit_grad", "one"))},
    "GradMemory.rule": declared(f"{D_M}.rule={{kind: gd, lr: 0.5}}"),
    "GradMemory.retention": declared(f"{D_M}.retention=0.5"),
    "GradMemory.every": declared(f"{D_M}.every=2"),
    "Update.direction": declared(f"{D_U}.direction=[{{memory: m, weight: 3.0}}]"),
    "Update.precondition": declared(f"{D_U}.precondition={{memory: v}}"),
    "Elementwise.kind": declared(f"{D_M}.structure=elementwise",
                                 before=(f"{D_M}.structure=matrix", f"{D_M}.keys=grad")),
    "Preconditioner.kind": declared(f"{D_M}.structure={{kind: matrix}}", f"{D_M}.keys=grad"),
    "MomentumMLP.kind": declared(f"{D_M}.structure={{kind: mlp}}", f"{D_M}.keys=grad"),
    "MomentumMLP.hidden": declared(f"{D_M}.structure.hidden=4", before=MLP_MEMORY),
    **{f"MomentumMLP.activation={a}": declared(f"{D_M}.structure.activation={a}",
                                               before=(*MLP_MEMORY, f"{D_M}.structure.activation={p}"))
       for a, p in (("tanh", "relu"), ("relu", "gelu"), ("gelu", "silu"), ("silu", "tanh"))},
    "MomentumMLP.seed": declared(f"{D_M}.structure.seed=3", before=MLP_MEMORY),
    "GradGD.kind": declared(f"{D_M}.rule={{kind: gd}}", before=(f"{D_M}.rule={{kind: dgd}}",)),
    "GradGD.lr": declared(f"{D_M}.rule.lr=0.5", before=(f"{D_M}.rule={{kind: gd}}",)),
    "GradDGD.kind": declared(f"{D_M}.rule={{kind: dgd}}"),
    "GradDGD.lr": declared(f"{D_M}.rule.lr=0.5", before=(f"{D_M}.rule={{kind: dgd}}",)),
    "GradDGD.erase": declared(f"{D_M}.rule.erase=0.0", before=(f"{D_M}.rule={{kind: dgd}}",)),
    "GradDGD.eps": declared(f"{D_M}.rule.eps=10.0", before=(f"{D_M}.rule={{kind: dgd}}",)),
    "Term.memory": declared(f"{D_U}.direction.0.memory=v"),
    "Term.weight": declared(f"{D_U}.direction.0.weight=3.0"),
    **{f"Term.map={m}": declared(f"{D_U}.direction.0.map={m}", before=(f"{D_U}.direction.0.map={p}",))
       for m, p in (("identity", "newton_schulz"), ("newton_schulz", "identity"))},
    "Term.ns_steps": declared(f"{D_U}.direction.0.ns_steps=1", before=(f"{D_U}.direction.0.map=newton_schulz",)),
    "Term.ns_kind": declared(f"{D_U}.direction.0.ns_kind=cubic", before=(f"{D_U}.direction.0.map=newton_schulz",)),
    "Term.debias": declared(f"{D_U}.direction.0.debias=true"),
    "Precondition.memory": declared(f"{D_U}.precondition.memory=w", before=PRECONDITIONED),
    "Precondition.eps": declared(f"{D_U}.precondition.eps=1.0", before=PRECONDITIONED),
    "Precondition.eps_inside": declared(f"{D_U}.precondition.eps_inside=true", before=PRECONDITIONED),
    "Precondition.debias": declared(f"{D_U}.precondition.debias=true", before=PRECONDITIONED),
    # ------------------------------------------------------------ memory: the box itself
    "Memory.level": case("matrix", f"{MEM}.level=chunk"),
    "Memory.keys": case("matrix", f"{MEM}.keys=q"),
    "Memory.values": case("matrix", f"{MEM}.values=q"),
    "Memory.rule": rejected("missing-key", "matrix", f"{MEM}.rule=null"),
    "Memory.retention": case("matrix", f"{MEM}.retention={{kind: l2, forget: 0.2}}"),
    "Memory.feature_map": case("matrix", f"{MEM}.feature_map=relu"),
    "Memory.window": case("deep", f"{MEM}.window={{tokens: 2}}"),
    "Memory.normalize": case("matrix", f"{MEM}.normalize=true",
                             before=(f"{MEM}.objective=dot", f"{MEM}.feature_map=elu1")),
    "Memory.write=stop_gradient": trains("matrix", f"{MEM}.write=stop_gradient"),
    "Memory.write=differentiable": trains("matrix", f"{MEM}.write=differentiable",
                                          before=(f"{MEM}.write=stop_gradient",)),
    # ------------------------------------------------------------ structures
    "MatrixStructure.kind": case("matrix", f"{MEM}.structure={MATRIX_STRUCT}",
                                 before=(f"{MEM}.structure={{kind: mlp, heads: n_heads, dim: d_head}}",
                                         LEARNED_INIT)),
    "MatrixStructure.heads": rejected("dim-mismatch", "matrix", f"{MEM}.structure={{kind: matrix, heads: 1, key_dim: 16, value_dim: 16}}"),
    "MatrixStructure.key_dim": rejected("dim-mismatch", "matrix", f"{MEM}.structure.key_dim=4"),
    "MatrixStructure.value_dim": rejected("dim-mismatch", "matrix", f"{MEM}.structure.value_dim=4"),
    "MLPStructure.kind": case("matrix", f"{MEM}.structure={{kind: mlp, heads: n_heads, dim: d_head}}",
                              LEARNED_INIT),
    "MLPStructure.heads": rejected("dim-mismatch", "deep", f"{MEM}.structure={{kind: mlp, heads: 1, dim: 16, expansion: 2}}"),
    "MLPStructure.dim": rejected("dim-mismatch", "deep", f"{MEM}.structure.dim=4"),
    "MLPStructure.depth": case("deep", f"{MEM}.structure.depth=3"),
    "MLPStructure.expansion": case("deep", f"{MEM}.structure.expansion=3"),
    "MLPStructure.residual": case("deep", f"{MEM}.structure.residual=false"),
    **enum_cases("MLPStructure.activation", "deep", f"{MEM}.structure.activation",
                 ["gelu", "silu", "relu", "tanh", "identity"]),
    **enum_cases("MLPStructure.norm", "deep", f"{MEM}.structure.norm", ["none", "layernorm"]),
    "MLPStructure.norm_eps": case("deep", f"{MEM}.structure.norm_eps=0.001",
                                  before=(f"{MEM}.structure.norm=layernorm",)),
    "GatedMLPStructure.kind": case("deep", f"{MEM}.structure={{kind: gated_mlp, heads: n_heads, dim: d_head}}"),
    **{f"GatedMLPStructure.{k}": case("deep", f"{MEM}.structure.{k}={v}",
                                      before=(f"{MEM}.structure={{kind: gated_mlp, heads: n_heads, dim: d_head}}",))
       for k, v in [("expansion", 2), ("residual", "false")]},
    "GatedMLPStructure.heads": rejected("dim-mismatch", "deep", f"{MEM}.structure={{kind: gated_mlp, heads: 1, dim: 16}}",
                                    before=(f"{MEM}.structure={{kind: gated_mlp, heads: n_heads, dim: d_head}}",)),
    "GatedMLPStructure.dim": rejected("dim-mismatch", "deep", f"{MEM}.structure={{kind: gated_mlp, heads: n_heads, dim: 4}}"),
    **enum_cases("GatedMLPStructure.activation", "deep", f"{MEM}.structure.activation",
                 ["gelu", "silu", "relu", "tanh"],
                 before=(f"{MEM}.structure={{kind: gated_mlp, heads: n_heads, dim: d_head}}",)),
    "CacheStructure.kind": case("matrix", f"{MEM}.structure={{kind: cache, heads: n_heads, key_dim: d_head, value_dim: d_head}}",
                                f"{MEM}.objective=softmax", f"{MEM}.rule=null"),
    "CacheStructure.heads": rejected("dim-mismatch", "cache", "memories.A.structure={kind: cache, heads: 1, key_dim: 16, value_dim: 16}"),
    "CacheStructure.key_dim": rejected("dim-mismatch", "cache", "memories.A.structure.key_dim=4"),
    "CacheStructure.value_dim": rejected("dim-mismatch", "cache", "memories.A.structure.value_dim=4"),
    "CacheStructure.window": case("cache", "memories.A.structure.window=4"),
    "CacheStructure.sinks": case("cache", "memories.A.structure.sinks=2",
                                 before=("memories.A.structure.window=4",)),
    # ------------------------------------------------------------ objectives
    "DotObjective.kind": case("matrix", f"{MEM}.objective=dot"),
    "L2Objective.kind": case("matrix", f"{MEM}.objective=l2", before=(f"{MEM}.objective=dot",)),
    "LpObjective.kind": case("deep", f"{MEM}.objective={{kind: lp, p: 3}}"),
    "LpObjective.p": case("deep", f"{MEM}.objective.p=4", before=(f"{MEM}.objective={{kind: lp, p: 3}}",)),
    "HuberObjective.kind": case("deep", f"{MEM}.objective={{kind: huber, delta: 0.05}}"),
    "HuberObjective.delta": case("deep", f"{MEM}.objective.delta=0.01",
                                 before=(f"{MEM}.objective={{kind: huber, delta: 0.05}}",)),
    **enum_cases("HuberObjective.switch", "deep", f"{MEM}.objective.switch", ["coordinate", "norm"],
                 before=(f"{MEM}.objective={{kind: huber, delta: 0.05}}",)),
    "TaskObjective.kind": case("cms", "memories.C.objective=task", "memories.C.keys=null",
                               "memories.C.values=null",
                               before=("memories.C.objective=l2", "memories.C.keys=h",
                                       "memories.C.values=x")),
    "SoftmaxObjective.kind": case("matrix", f"{MEM}.structure={{kind: cache, heads: n_heads, key_dim: d_head, value_dim: d_head}}",
                                  f"{MEM}.objective=softmax", f"{MEM}.rule=null"),
    # ------------------------------------------------------------ rules (on the deep memory)
    "GDRule.kind": case("deep", f"{MEM}.rule={{kind: gd, lr: lr}}",
                        before=(f"{MEM}.rule={{kind: momentum, lr: lr, momentum: mom}}",)),
    "GDRule.lr": case("deep", f"{MEM}.rule.lr=0.05"),
    "MomentumRule.kind": case("deep", f"{MEM}.rule={{kind: momentum, lr: lr, momentum: mom}}"),
    "MomentumRule.lr": case("deep", f"{MEM}.rule.lr=0.05",
                            before=(f"{MEM}.rule={{kind: momentum, lr: lr, momentum: mom}}",)),
    "MomentumRule.momentum": case("deep", f"{MEM}.rule.momentum=0.3",
                                  before=(f"{MEM}.rule={{kind: momentum, lr: lr, momentum: mom}}",)),
    "DGDRule.kind": case("deep", f"{MEM}.rule={{kind: dgd, lr: lr}}"),
    "DGDRule.lr": case("deep", f"{MEM}.rule.lr=0.05", before=(f"{MEM}.rule={{kind: dgd, lr: lr}}",)),
    "DGDRule.momentum": case("deep", f"{MEM}.rule.momentum=mom", before=(f"{MEM}.rule={{kind: dgd, lr: lr}}",)),
    **enum_cases("DGDRule.step", "deep", f"{MEM}.rule.step", ["explicit", "proximal"],
                 before=(f"{MEM}.rule={{kind: dgd, lr: lr}}",)),
    "MuonRule.kind": case("deep", f"{MEM}.rule={{kind: muon, lr: lr, momentum: mom}}"),
    **{f"MuonRule.{k}": case("deep", f"{MEM}.rule.{k}={v}",
                             before=(f"{MEM}.rule={{kind: muon, lr: lr, momentum: mom}}",))
       for k, v in [("lr", 0.05), ("momentum", 0.3), ("ns_steps", 1)]},
    **enum_cases("MuonRule.ns_kind", "deep", f"{MEM}.rule.ns_kind", ["quintic", "cubic"],
                 before=(f"{MEM}.rule={{kind: muon, lr: lr, momentum: mom, ns_steps: 2}}",)),
    # ------------------------------------------------------------ retention (deep memory)
    "L2Retention.kind": case("deep", f"{MEM}.retention={{kind: l2, forget: fg}}"),
    # Local retention is defined for a per-token gd memory: the matrix base.
    **enum_cases("L2Retention.mode", "matrix", f"{MEM}.retention.mode", ["global", "local"],
                 before=(f"{MEM}.retention={{kind: l2, forget: 0.2}}",)),
    # Toward the (learned) initial state or toward zero: the deep base starts away from zero.
    **enum_cases("L2Retention.toward", "deep", f"{MEM}.retention.toward", ["zero", "init"],
                 before=(f"{MEM}.retention={{kind: l2, forget: fg}}",)),
    "L2Retention.forget": case("deep", f"{MEM}.retention.forget=0.5",
                               before=(f"{MEM}.retention={{kind: l2, forget: fg}}",)),
    "L2Retention.log_decay": case("deep", f"{MEM}.retention.log_decay=-0.5",
                                  before=(f"{MEM}.retention={{kind: l2, log_decay: -0.1}}",)),
    "KLRetention.kind": case("deep", f"{MEM}.retention={{kind: kl, forget: fg}}"),
    **{f"KLRetention.{k}": case("deep", f"{MEM}.retention.{k}={v}",
                                before=(f"{MEM}.retention={{kind: kl, forget: fg}}",))
       for k, v in [("forget", 0.5), ("scale", 3.0)]},
    "LqRetention.kind": case("deep", f"{MEM}.retention={{kind: lq, forget: fg}}"),
    **{f"LqRetention.{k}": case("deep", f"{MEM}.retention.{k}={v}",
                                before=(f"{MEM}.retention={{kind: lq, forget: fg}}",))
       for k, v in [("forget", 0.5), ("q", 3.0)]},
    # ------------------------------------------------------------ feature maps, window
    **enum_cases("FeatureMap.kind", "matrix", f"{MEM}.feature_map",
                 ["identity", "relu", "elu1", "softmax", "exp"],
                 fmt=lambda k: "{kind: exp, degree: 2}" if k == "exp" else k),
    # ATLAS's φ_p starts as the truncated φ* (a_i = 1/i!) and its coefficients then train.
    "FeatureMap.kind=polynomial": case("matrix", f"{MEM}.feature_map={{kind: polynomial, degree: 2}}",
                                       outcome="learned",
                                       before=(f"{MEM}.feature_map={{kind: exp, degree: 2}}",)),
    "FeatureMap.degree": case("matrix", f"{MEM}.feature_map.degree=3",
                              before=(f"{MEM}.feature_map={{kind: polynomial, degree: 2}}",)),
    "Window.tokens": case("deep", f"{MEM}.window.tokens=4", before=(f"{MEM}.window={{tokens: 2}}",)),
    "Window.weight": case("deep", f"{MEM}.window.weight=fg", before=(f"{MEM}.window={{tokens: 4}}",)),
    "Window.positions": case("deep", f"{MEM}.window.positions=om", before=(
        f"{MEM}.window={{tokens: 4}}", f"{N}.om={{op: linear, in: h, out: [n_heads, 4], then: [sigmoid]}}")),
    # ------------------------------------------------------------ initial states and resets
    "ZerosInit.kind": case("matrix", f"{MEM}.init=zeros", before=(f"{MEM}.init=identity",)),
    "IdentityInit.kind": case("matrix", f"{MEM}.init=identity"),
    "LearnedInit.kind": trains("matrix", f"{MEM}.init={{kind: learned}}"),
    "LearnedInit.by": trains("matrix", f"{MEM}.init.by=extra",
                             before=("levels.extra={every: never}", f"{MEM}.init={{kind: learned}}")),
    "LearnedInit.gain": case("deep", f"{MEM}.init.gain=3.0", outcome="init"),
    # `never` keeps the state across sequences, `sequence` starts each one afresh. See
    # KNOWN_IGNORED in test_coverage.py: nothing downstream of the schema tells them apart.
    # These cases compare one forward pass; once a consumer exists (the module told of a new
    # sequence, or the train loop keeping `never` memories at a fresh batch), observe it here.
    "SequenceReset.kind": case("matrix", f"{MEM}.reset=sequence", outcome="carries",
                               before=(f"{MEM}.reset=never",)),  # fmt: skip
    "NeverReset.kind": case("matrix", f"{MEM}.reset=never", outcome="carries"),
    "LevelReset.kind": case("matrix", f"{MEM}.reset={{kind: level, level: chunk}}"),
    "LevelReset.level": case("matrix", f"{MEM}.reset.level=slow",
                             before=(f"{MEM}.reset={{kind: level, level: chunk}}",)),
    # ------------------------------------------------------------ step-size sources
    "Learned.kind": case("matrix", f"{MEM}.rule.lr={{kind: learned, init: 0.3}}"),
    "Learned.init": case("matrix", f"{MEM}.rule.lr.init=0.7", outcome="init",
                         before=(f"{MEM}.rule.lr={{kind: learned, init: 0.3}}",)),
    **{f"Learned.per={per}": case("matrix", f"{MEM}.rule.lr.per={per}", outcome="init",
                                  before=(f"{MEM}.rule.lr={{kind: learned, init: 0.3, per: {o}}}",))
       for per, o in [("head", "scalar"), ("scalar", "head")]},
    # ------------------------------------------------------------ learned step sizes and gates
    # (values exact in float32: a learned value is made in float32 before `.double()`)
    "GDRule.lr:learned": learned("deep", f"{MEM}.rule.lr", 0.125),
    **{f"{rule}.{field}:learned": learned("deep", f"{MEM}.rule.{field}", value,
                                          before=(f"{MEM}.rule={{kind: {kind}, lr: 0.125, momentum: 0.5}}",))
       for rule, kind in [("MomentumRule", "momentum"), ("DGDRule", "dgd"), ("MuonRule", "muon")]
       for field, value in [("lr", 0.125), ("momentum", 0.5)]},
    "HuberObjective.delta:learned": learned("deep", f"{MEM}.objective.delta", 0.0625,
                                            before=(f"{MEM}.objective={{kind: huber, delta: 0.0625}}",)),
    "L2Retention.forget:learned": learned("deep", f"{MEM}.retention.forget", 0.125,
                                          before=(f"{MEM}.retention={{kind: l2, forget: 0.125}}",)),
    "L2Retention.log_decay:learned": learned("deep", f"{MEM}.retention.log_decay", -0.125,
                                             before=(f"{MEM}.retention={{kind: l2, log_decay: -0.125}}",)),
    "KLRetention.forget:learned": learned("deep", f"{MEM}.retention.forget", 0.125,
                                          before=(f"{MEM}.retention={{kind: kl, forget: 0.125}}",)),
    "LqRetention.forget:learned": learned("deep", f"{MEM}.retention.forget", 0.125,
                                          before=(f"{MEM}.retention={{kind: lq, forget: 0.125}}",)),
    "Window.weight:learned": learned("deep", f"{MEM}.window.weight", 0.5,
                                     before=(f"{MEM}.window={{tokens: 4, weight: 0.5}}",)),
    "Window.positions:learned": learned("deep", f"{MEM}.window.positions", 0.5,
                                        before=(f"{MEM}.window={{tokens: 4, positions: 0.5}}",)),
    # ------------------------------------------------------------ block ops
    "Linear.op": case("matrix", *inserted("{op: linear, in: y, out: d_model}")),
    "Linear.in_": case("matrix", f"{N}.v.in=x"),
    "Linear.out": rejected("dim-mismatch", "matrix", f"{N}.y.out=8"),
    "Linear.bias": trains("matrix", f"{N}.y.bias=true"),
    "Linear.rank": case("matrix", f"{N}.y.rank=4"),
    "BiasInit.init": case("matrix", f"{N}.y.bias={{init: 0.5}}", outcome="init",
                          before=(f"{N}.y.bias=true",)),
    **{f"Linear.then={p}": case("matrix", f"{N}.y.then=[{p}]") for p in POSTOPS},
    **{f"Norm.op={p}": case("matrix", *inserted(f"{{op: {p}, in: y}}")) for p in ("rmsnorm", "layernorm")},
    "Norm.in_": case("matrix", f"{N}.z.in=x", before=inserted("{op: layernorm, in: y}")),
    **{f"Unary.op={p}": case("matrix", *inserted(f"{{op: {p}, in: y}}")) for p in UNARY},
    "Unary.in_": case("matrix", f"{N}.z.in=x", before=inserted("{op: tanh, in: y}")),
    "Scale.op": case("matrix", *inserted("{op: scale, in: y, by: 3.0}")),
    "Scale.in_": case("matrix", f"{N}.z.in=x", before=inserted("{op: scale, in: y, by: 3.0}")),
    "Scale.by": case("matrix", f"{N}.z.by=0.5", before=inserted("{op: scale, in: y, by: 3.0}")),
    "ShortConv.op": case("matrix", *inserted("{op: short_conv, in: y}")),
    "ShortConv.in_": case("matrix", f"{N}.z.in=x", before=inserted("{op: short_conv, in: y}")),
    "ShortConv.kernel": case("matrix", f"{N}.z.kernel=2", before=inserted("{op: short_conv, in: y}")),
    "Mul.op": case("matrix", *inserted("{op: mul, in: [y, x]}")),
    "Mul.in_": case("matrix", f"{N}.z.in=[y, y]", before=inserted("{op: mul, in: [y, x]}")),
    "Add.op": case("matrix", *inserted("{op: add, in: [y, x]}")),
    "Add.in_": case("matrix", f"{N}.x1.in=[x, y, y]"),
    "Read.op": case("matrix", f"{N}.y.in=o", before=(f"{N}.y.in=q",)),
    # Two memories, both read; the variant swaps which read feeds `y`.
    "Read.memory": case("matrix", f"{N}.o.memory=M2", f"{N}.o2.memory=M",
                        before=(f"memories.M2={{structure: {MATRIX_STRUCT}, level: token, keys: q, "
                                "values: k, objective: dot, rule: {kind: gd, lr: 0.5}}",
                                f"{N}.o2={{op: read, memory: M2, query: q}}")),
    "Read.query": case("matrix", f"{N}.o.query=k"),
    **enum_cases("Read.order", "deep", f"{N}.o.order",
                 ["write_then_read", "read_then_write", "chunk_start"]),
    "Rope.op": case("matrix", f"{N}.qr={{op: rope, in: q}}", f"{N}.o.query=qr"),
    "Rope.in_": case("matrix", f"{N}.qr.in=k", before=(f"{N}.qr={{op: rope, in: q}}", f"{N}.o.query=qr")),
    "Rope.base": case("matrix", f"{N}.qr.base=10.0", before=(f"{N}.qr={{op: rope, in: q}}", f"{N}.o.query=qr")),
    # The three prefix ops only work together: the reference is the plain cache.
    "Persistent.op": case("cache", other="prefix"),
    "WithPrefix.op": case("cache", other="prefix"),
    "DropPrefix.op": case("cache", other="prefix"),
    "Persistent.tokens": case("prefix", f"{N}.p.tokens=3"),
    "Persistent.dim": rejected("dim-mismatch", "prefix", f"{N}.p.dim=8"),
    "WithPrefix.in_": case("prefix", f"{N}.s.in=x0", before=(f"{N}.x0={{op: rmsnorm, in: x}}",)),
    "WithPrefix.prefix": case("prefix", f"{N}.s.prefix=[p, p2]",
                              before=(f"{N}.p2={{op: persistent, tokens: 1, dim: d_model}}",)),
    "WithPrefix.segment": case("prefix", f"{N}.s.segment=chunk"),
    "DropPrefix.in_": case("prefix", f"{N}.od.in=v"),
    "DropPrefix.of": rejected("dangling-ref", "prefix", f"{N}.od.of=q"),
    "Aggregate.op": case("matrix", f"{N}.z={{op: aggregate, in: [x, y], mode: mean}}", "blocks.0.out=z"),
    "Aggregate.in_": case("matrix", f"{N}.z.in=[x, y, y]",
                          before=(f"{N}.z={{op: aggregate, in: [x, y], mode: mean}}", "blocks.0.out=z")),
    # A learned aggregate starts as the mean, so each mode is compared with another one.
    **{f"Aggregate.mode={mode}": case("matrix", f"{N}.z.mode={mode}",
                                      before=(f"{N}.z={{op: aggregate, in: [x, y], mode: {o}}}",
                                              "blocks.0.out=z"))
       for mode, o in [("sum", "mean"), ("mean", "sum"), ("learned", "sum")]},
}
# fmt: on

# ---------------------------------------------------------------- constructs x memory kinds
# The table above covers each field where it matters most; a construct may still be ignored on
# another kind of memory (an initial state for a cache, an expansion for a one-layer MLP).
# Each memory construct on each kind of memory must change the model or be rejected.
SETUPS = {  # name -> (base, memory, overrides that make this kind of memory)
    "matrix@chunk": ("matrix", "M", ("memories.M.level=chunk",)),
    "mlp@token": ("deep", "M", ("levels.token={every: 1}", "memories.M.level=token")),
    "gated_mlp@chunk": (
        "deep",
        "M",
        (f"{MEM}.structure={{kind: gated_mlp, heads: n_heads, dim: d_head}}",),
    ),
    "mlp(depth=1)@chunk": (
        "deep",
        "M",
        (f"{MEM}.structure={{kind: mlp, heads: n_heads, dim: d_head, depth: 1}}",),
    ),
    "cache@token": ("cache", "A", ()),
    "task@cms": ("cms", "C", ()),
}
CONSTRUCTS = {  # name -> overrides ({m}: the memory's path), and whether it shows in training only
    "feature_map=relu": (("{m}.feature_map=relu",), "differs"),
    "feature_map=polynomial": (("{m}.feature_map={{kind: polynomial, degree: 2}}",), "differs"),
    "window": (("{m}.window={{tokens: 2}}",), "differs"),
    "retention=l2": (("{m}.retention={{kind: l2, forget: 0.2}}",), "differs"),
    "retention=kl": (("{m}.retention={{kind: kl, forget: 0.2}}",), "differs"),
    "retention toward init": (("{m}.retention={{kind: l2, forget: 0.2, toward: init}}",), "differs"),
    "rule=dgd": (("{m}.rule={{kind: dgd, lr: 0.3}}",), "differs"),
    "objective=dot": (("{m}.objective=dot",), "differs"),
    "init=identity": (("{m}.init=identity",), "differs"),
    "init=learned": (("{m}.init={{kind: learned}}",), "trains"),
    "init=zeros": (("{m}.init=zeros",), "differs"),
    "init gain": (("{m}.init={{kind: learned, gain: 3.0}}",), "init"),
    "reset=level": (
        ("levels.slow={{every: 16}}", "{m}.reset={{kind: level, level: slow}}"),
        "differs",
    ),
    "write=stop_gradient": (("{m}.write=stop_gradient",), "trains"),
    "structure.expansion": (("{m}.structure.expansion=3",), "differs"),
    "structure.activation": (("{m}.structure.activation=tanh",), "differs"),
    "structure.residual": (("{m}.structure.residual=false",), "differs"),
}
# Pairs where the construct is the setup's own choice already (nothing to switch on).
NOOP = {
    ("matrix@chunk", "init=zeros"),
    ("cache@token", "init=zeros"),
    ("task@cms", "init=learned"),
    ("task@cms", "structure.residual"),
} | {(s, "init=learned") for s in ("mlp@token", "gated_mlp@chunk", "mlp(depth=1)@chunk")}

GRID: dict[str, Case] = {
    f"{setup}+{name}": Case(
        base, tuple(o.format(m=f"memories.{mem}") for o in overrides), outcome, before
    )
    for setup, (base, mem, before) in SETUPS.items()
    for name, (overrides, outcome) in CONSTRUCTS.items()
    if (setup, name) not in NOOP
}
# An MLP memory whose weights all start at zero (`init: zeros`, the schema's default init) has a
# zero gradient in every layer, so no rule, objective or retention would ever move it: rejected.
GRID["mlp@chunk+init=zeros"] = Case("deep", (f"{MEM}.init=zeros",), "differs", ())
