"""The static choices of a deep in-context memory, as one frozen, validated object.

Everything about a memory that does not change from token to token lives here: its structure
(Titans §3.1 / Miras §3 memory architecture), its attentional bias and that bias's constants
(Miras §3.1), its update rule (Titans §3.2, NL eqs. 57 / 88, Atlas eq. 32) with the rule's
constants, its retention and the retention's mode and constants (Miras §3.3), the chunk length
of the parallel form (Titans §3.2, Miras §5) and the Omega window (Atlas eq. 9). Per-token
tensors (q, k, v, the gates, a data-dependent Huber threshold, the window weights) stay
arguments of ``deep_memory``; so does the read order, which one memory may use several of.

The fields are plain values (strings, numbers, a :class:`MemoryStructure`), so a compiler pass
can build the object from a spec and print it; ``__post_init__`` rejects every invalid
combination with a message that says what is wrong and which values are allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..newton_schulz import KINDS as NS_KINDS
from .objectives import OBJECTIVES
from .retention import RETENTIONS
from .structure import MemoryStructure

RULES = ("gd", "momentum", "dgd", "dgd_momentum", "muon")
MOMENTUM_RULES = ("momentum", "dgd_momentum", "muon")  # rules that carry a momentum state
READS = ("write_then_read", "read_then_write", "chunk_start")
DGD_STEPS = ("explicit", "proximal")
RETENTION_MODES = ("global", "local")

# Shorthands for the signatures of ``deep_memory`` and its backends.
Tensor = torch.Tensor
Tensors = Sequence[torch.Tensor]
MemoryResult = tuple[Tensor, tuple[list[Tensor], list[Tensor] | None] | None]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass(frozen=True)
class DeepMemoryOptions:
    """Every static choice of ``deep_memory`` (README.md §1-§5 give the math of each).

    structure       the per-head MLP (:class:`MemoryStructure`)
    objective       attentional bias, one of OBJECTIVES; ``p`` (lp, > 1) and ``delta`` (the
                    constant Huber threshold, > 0) are its constants
    rule            update rule, one of RULES; ``dgd_step`` ('explicit' or 'proximal', NL eq.
                    57) for the dgd rules, ``ns_steps`` / ``ns_kind`` the Newton-Schulz
                    iteration of muon
    retention       'l2', 'kl' or 'lq' (how the state maps to the visible weights);
                    ``q_norm`` (lq's q > 1) and ``kl_scale`` (kl's simplex mass c > 0)
    retention_mode  'global' (Titans: the decay and the gradient step both start from the last
                    state) or 'local' (Miras's local retention ``||W - r_t W_{t-1}||^2``, Gated
                    DeltaNet: decay first, gradient at the decayed state); l2 retention with
                    the gd, momentum or muon rule only
    lag_token       kl only: Memora's lag token (Miras eq. 30): the first token of every
                    chunk takes its exact (normalized) step and the chunk's other tokens take
                    their gradients at the state after it (README §4)
    chunk_size      tokens per chunk, >= 1 (1 = the exact per-token recurrence)
    window          Omega window length c >= 1 (Atlas eq. 9; 1 = the online objective)
    anchored        l2 retention toward the initial weights instead of toward zero:
                    ``W_t = A + r_t (W_{t-1} - A) + update`` with ``A`` the call's ``anchor``
                    (the memory's meta-learned initial state). Weight decay toward zero shrinks
                    a memory whose output is normalized without forgetting anything, and its
                    effective step grows as the weights shrink (docs/architectures.md, "The
                    norm's floor"); toward ``A`` the scale stays. For dgd only the retention
                    term moves: ``W_t = W_{t-1} (r_t I - lr_t a a^T) + (1 - r_t) A - lr_t G``.
                    Global mode, any rule but muon, window 1 only
    recompute       chunk form, under autograd only: 0 keeps every chunk's intermediates for
                    backward; g >= 1 keeps the state at every g-th chunk boundary and
                    recomputes the g chunks in between during backward (activation memory
                    about N / g states plus g chunks instead of N chunks, for one more
                    forward pass; the results are the same numbers). Speed, never semantics.
    """

    structure: MemoryStructure
    objective: str = "l2"
    p: float = 3.0
    delta: float = 1.0
    rule: str = "gd"
    dgd_step: str = "explicit"
    ns_steps: int = 5
    ns_kind: str = "quintic"
    retention: str = "l2"
    retention_mode: str = "global"
    q_norm: float = 4.0
    kl_scale: float = 1.0
    lag_token: bool = False
    chunk_size: int = 16
    window: int = 1
    anchored: bool = False
    recompute: int = 0

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ValueError("DeepMemoryOptions: " + "; ".join(problems))

    def segments(self) -> tuple[tuple[int, int], ...]:
        """``(start, end)`` token spans of a chunk whose gradients share one state, each ending
        at a boundary: the whole chunk, or with Memora's lag token its first token, then the rest."""
        C = self.chunk_size
        return ((0, 1), (1, C)) if self.lag_token and C > 1 else ((0, C),)

    @property
    def has_momentum(self) -> bool:
        """Whether the rule carries a momentum state between tokens."""
        return self.rule in MOMENTUM_RULES


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str | None:
    if value not in allowed:
        return f"{name} must be one of {allowed}, got {value!r}"
    return None


def _problems(o: DeepMemoryOptions):
    """Every invalid field or combination, as one message each."""
    if not isinstance(o.structure, MemoryStructure):
        yield f"structure must be a MemoryStructure, got {type(o.structure).__name__}"
    for name, allowed in (("objective", OBJECTIVES), ("rule", RULES), ("dgd_step", DGD_STEPS),
                          ("ns_kind", NS_KINDS), ("retention", RETENTIONS),
                          ("retention_mode", RETENTION_MODES)):  # fmt: skip
        bad = _choice(name, getattr(o, name), allowed)
        if bad:
            yield bad
    if not _is_number(o.p) or o.p <= 1.0:
        yield f"the lp objective needs p > 1, got {o.p!r}"
    if not _is_number(o.delta) or o.delta <= 0.0:
        yield f"the Huber threshold delta must be a number > 0, got {o.delta!r}"
    if not _is_number(o.q_norm) or o.q_norm <= 1.0:
        yield f"lq retention needs q_norm > 1, got {o.q_norm!r}"
    if not _is_number(o.kl_scale) or o.kl_scale <= 0.0:
        yield f"kl retention needs kl_scale > 0, got {o.kl_scale!r}"
    for name in ("ns_steps", "chunk_size", "window"):
        value = getattr(o, name)
        if not _is_int(value) or value < 1:
            yield f"{name} must be an int >= 1, got {value!r}"
    if not _is_int(o.recompute) or o.recompute < 0:
        yield f"recompute must be an int >= 0 (chunks per recomputed group), got {o.recompute!r}"
    if o.dgd_step == "proximal" and not str(o.rule).startswith("dgd"):
        yield f"dgd_step='proximal' is a step of the dgd rules, not of rule={o.rule!r}"
    if _is_int(o.window) and o.window > 1 and str(o.rule).startswith("dgd"):
        yield f"rule={o.rule!r} is its own (delta-rule) objective; it takes no window (window=1)"
    if o.retention_mode == "local":
        if o.retention != "l2":
            yield f"retention_mode='local' is the l2 retention's, not retention={o.retention!r}"
        if str(o.rule).startswith("dgd"):
            yield f"retention_mode='local' is lowered for gd, momentum and muon, not {o.rule!r}"
        if _is_int(o.window) and o.window > 1:
            yield "retention_mode='local' is not lowered together with an Omega window"
    if not isinstance(o.anchored, bool):
        yield f"anchored must be a bool, got {o.anchored!r}"
    elif o.anchored:
        if o.retention != "l2" or o.retention_mode != "global":
            yield (f"anchored is lowered for l2 retention in the global mode, not "
                   f"{o.retention!r} / {o.retention_mode!r}")  # fmt: skip
        if o.rule == "muon":
            yield "anchored is lowered for the gd, momentum and dgd rules, not 'muon'"
        if _is_int(o.window) and o.window > 1:
            yield "anchored is not lowered together with an Omega window (window > 1)"
    if not isinstance(o.lag_token, bool):
        yield f"lag_token must be a bool, got {o.lag_token!r}"
    elif o.lag_token and o.retention != "kl":
        yield f"lag_token is Memora's (kl retention), not for retention={o.retention!r}"
    elif o.lag_token and _is_int(o.window) and o.window > 1:
        yield "lag_token is not lowered together with an Omega window (window > 1)"


def check_inputs(
    options: DeepMemoryOptions,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    momentum: Sequence[torch.Tensor] | None,
    *,
    read: str,
    delta: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    window_prefix: Sequence[torch.Tensor] | None = None,
    omega: torch.Tensor | None = None,
    anchor: Sequence[torch.Tensor] | None = None,
) -> None:
    """The tensors of one call checked against the options (shared by the loop and chunk forms)."""
    if not isinstance(options, DeepMemoryOptions):
        raise TypeError(f"options must be a DeepMemoryOptions, got {type(options).__name__}")
    structure = options.structure
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q, k must share a [B, T, H, d_in] shape, got {q.shape}, {k.shape}")
    B, T, H, D = q.shape
    if D != structure.d_in or tuple(v.shape) != (B, T, H, structure.d_out):
        raise ValueError(
            f"expected q, k [B, T, H, {structure.d_in}] and v [B, T, H, {structure.d_out}], "
            f"got {tuple(q.shape)}, {tuple(v.shape)}"
        )
    for gate in gates:
        if tuple(gate.shape) != (B, T, H):
            raise ValueError(f"gates must be [B, T, H] = {(B, T, H)}, got {tuple(gate.shape)}")
    shapes = [(B, H, o, i) for o, i in structure.shapes()]
    if (anchor is not None) != options.anchored:
        raise ValueError("an anchor is given exactly when the options are anchored")
    for name, states in (("weights", weights), ("momentum", momentum), ("anchor", anchor)):
        if states is None:
            continue
        got = [tuple(w.shape) for w in states]
        if got != shapes:
            raise ValueError(f"{name} must have shapes {shapes}, got {got}")
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")
    if momentum is not None and not options.has_momentum:
        raise ValueError(
            f"an initial momentum is only used by rules with momentum, got {options.rule!r}"
        )
    if delta is not None:
        if tuple(delta.shape) != (B, T, H):
            raise ValueError(f"delta must be [B, T, H] = {(B, T, H)}, got {tuple(delta.shape)}")
        if options.window > 1:
            raise ValueError("a per-token Huber delta is not supported with window > 1")
    if gamma is not None and tuple(gamma.shape) != (B, T, H):
        raise ValueError(f"gamma must be [B, T, H] = {(B, T, H)}, got {tuple(gamma.shape)}")
    if omega is not None and tuple(omega.shape) != (B, T, H, options.window):
        raise ValueError(f"omega must be [B, T, H, window] = {(B, T, H, options.window)}, "
                         f"got {tuple(omega.shape)}")  # fmt: skip
    if window_prefix is not None:
        kp, vp, gp = window_prefix
        P = kp.shape[1]
        if P > options.window - 1 or tuple(kp.shape) != (B, P, H, D) or tuple(vp.shape) != (
            B, P, H, structure.d_out) or tuple(gp.shape) != (B, P, H):  # fmt: skip
            raise ValueError(
                f"window_prefix must be (k [B, P, H, {D}], v [B, P, H, {structure.d_out}], "
                f"gamma [B, P, H]) with P <= window - 1 = {options.window - 1}"
            )
