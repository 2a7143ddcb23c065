"""What every memory module shares: head axes, feature maps, stop-gradient writes, resets.

A memory module runs one span of tokens: it learns from the span's keys, values and gates and
answers the span's reads, carrying its state in the stream. Subclasses implement `_span` for
one kernel; this base splits spans at reset boundaries (`reset: {kind: level}`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nestdsl.compiler.modules.gates import Gates
from nestdsl.compiler.modules.ops import Stream
from nestdsl.compiler.plan import MemoryPlan


def feature_map(kind: str | None, degree: int | None, x: torch.Tensor) -> torch.Tensor:
    """φ on keys and queries (ATLAS §3): elementwise maps, or a polynomial expansion."""
    if kind in (None, "identity"):
        return x
    if kind == "relu":
        return F.relu(x)
    if kind == "elu1":
        return F.elu(x) + 1.0
    if kind == "softmax":
        return x.softmax(dim=-1)
    terms, power = [x], x
    for i in range(2, degree + 1):  # x^{⊗i} / sqrt(i!): the Taylor terms of exp(q·k)
        power = (power.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
        terms.append(power / math.sqrt(math.factorial(i)))
    return torch.cat(terms, dim=-1)


class MemoryModule(nn.Module):
    """Base: subclasses implement `init_state(B, like)` and `_span(...)`."""

    def __init__(self, plan: MemoryPlan):
        super().__init__()
        self.plan = plan
        self.key = plan.name
        self.lowered = plan.options  # everything static, decided by `lower_memories`
        self.gates = Gates(plan.memory, plan.heads)
        self.stop_gradient = self.lowered.stop_gradient

    # ---------------------------------------------------------------- helpers for subclasses

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, d]` (one head, head axis omitted) or `[B, T, H, d]` -> `[B, T, H, d]`, in at
        least float32: memory updates accumulate over the whole context, and the triangular
        solves of the delta rules have no 16-bit kernels."""
        x = x.float() if x.dtype in _HALF else x
        return x.unsqueeze(2) if x.dim() == 3 else x

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return feature_map(self.lowered.feature_map, self.lowered.degree, x)

    def write_inputs(self, env: dict):
        """Keys and values `[B, T, H, d]` from the block, detached for stop-gradient writes."""
        mem = self.plan.memory
        k = self.phi(self.heads_first(env[mem.keys]))
        v = self.heads_first(env[mem.values])
        if self.stop_gradient:
            k, v = k.detach(), v.detach()
        return k, v

    def gate(self, role: str, env: dict, like: torch.Tensor, default: float | None = None):
        g = self.gates.get(role, env, like, default)
        if g is not None and g.dtype in _HALF:
            g = g.float()
        return g.detach() if g is not None and self.stop_gradient else g

    # ---------------------------------------------------------------- running a span

    in_region = False  # set by the layer: reads live on a `with_prefix` region's time axis

    def run(self, env: dict, reads: list[tuple[torch.Tensor, str]], stream: Stream,
            T: int | None = None):  # fmt: skip
        """Learn from this span and answer `reads` (query, order); outputs keep query layout."""
        with _full_precision(env):
            outs = self._run_span(env, reads, stream, T)
        return [o.to(q.dtype) for o, (q, _) in zip(outs, reads)]

    def _run_span(self, env, reads, stream, T):
        queries = [(self.phi(self.heads_first(q)), order, q.dim() == 3)
                   for q, order in reads]  # fmt: skip
        if T is None:  # a write with no read to answer: the span is the keys' length
            T = env[self.plan.memory.keys].shape[1]
        every = self.plan.reset_every
        if every and self.in_region:  # region spans never cross a segment: reset at the start
            if stream.base_pos % every == 0 and stream.base_pos > 0:
                self.reset(stream)
            every = None
        if not every:
            outs = self._span(env, [(q, o) for q, o, _ in queries], stream, 0, T)
        else:
            pieces = []
            start = 0
            while start < T:
                to_boundary = every - (stream.pos + start) % every
                end = min(T, start + to_boundary)
                if (stream.pos + start) % every == 0 and (stream.pos + start) > 0:
                    self.reset(stream)
                sub_env = {n: t[:, start:end] if _is_seq(t, T) else t for n, t in env.items()}
                sub_q = [(q[:, start:end], o) for q, o, _ in queries]
                pieces.append(self._span(sub_env, sub_q, stream, start, end - start))
                start = end
            outs = [torch.cat([p[i] for p in pieces], dim=1) for i in range(len(queries))]
        return [o.squeeze(2) if squeeze else o for o, (_, _, squeeze) in zip(outs, queries)]

    def read_state(self, query: torch.Tensor, order: str, stream: Stream) -> torch.Tensor:
        """Answer a read from the state carried in (a feedback read: no write of this span)."""
        with _full_precision(env={"query": query}):
            out = self._read_state(self.phi(self.heads_first(query)), order, stream)
        return (out.squeeze(2) if query.dim() == 3 else out).to(query.dtype)

    def _read_state(self, q, order, stream):
        raise AssertionError(f"`schedule_levels` let a feedback read of `{self.plan.decl}` "
                             "through (a bug in nestdsl)")

    def reset(self, stream: Stream) -> None:
        """Forget the carried state: the next span starts from the initial state."""
        for key in [*stream.state, *stream.new_state]:
            if key.startswith(self.key + "."):
                stream.new_state[key] = None

    CARRIED = ("W", "S")  # the state proper (weights, momentum), as opposed to chunk bookkeeping

    def carried(self, state: dict) -> dict:
        """This memory's state proper in `state` (what `reset: never` keeps across sequences)."""
        prefix = self.key + "."
        return {k: v for k, v in state.items()
                if k.startswith(prefix) and k[len(prefix):].split(".")[0] in self.CARRIED}  # fmt: skip

    def state_of(self, stream: Stream, name: str):
        """The latest value of one of this memory's state tensors, or None."""
        return stream.get(f"{self.key}.{name}")

    def state_size(self) -> int:
        """Numbers in one sequence's state of this memory: its weights (a cache grows with the
        context and counts 0; momenta and carried tokens are not counted)."""
        initial = getattr(self, "initial", None)
        if initial is None:
            return 0
        return sum(t.numel() for t in ([initial] if torch.is_tensor(initial) else initial))

    def _span(self, env, queries, stream: Stream, offset: int, T: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        m = self.plan
        return (f"{m.memory.structure.kind}, {m.heads} heads, {m.key_dim}->{m.value_dim}, "
                f"level={m.level} (every {m.every}), kernel={m.kernel}: {m.options.describe()}")  # fmt: skip


def _is_seq(t: torch.Tensor, T: int) -> bool:
    return t.dim() >= 2 and t.shape[1] == T


_HALF = (torch.float16, torch.bfloat16)


def _full_precision(env: dict):
    """Memory math outside autocast (inputs are upcast by `heads_first` and `gate`)."""
    device = next((t.device.type for t in env.values() if torch.is_tensor(t)), "cpu")
    return torch.autocast(device_type=device, enabled=False)
