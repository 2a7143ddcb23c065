"""What every memory module shares: head axes, feature maps, stop-gradient writes, resets.

A memory module runs one span of tokens: it learns from the span's keys, values and gates and
answers the span's reads, carrying its state in the stream. Subclasses implement `_span` for
one kernel; this base splits spans at reset boundaries (`reset: {kind: level}`).

A feature map on a residual memory goes inside it (ATLAS eqs. 19-21 with eq. 42):
`M(x) = x + N(MLP(φ(x)))`. The subclass runs the memory without its skip path,
`N(MLP(·))`, on φ(k) with the target `v - k` (`dot`: `v`), and this base adds the raw query
back to every read. Every objective but `dot` is a function of the error
`M(k) - v = N(MLP(φ(k))) - (v - k)`, and `dot`'s `-<k, v>` has no weight in it, so the
gradients, and every update, are those of the residual memory (`lower_memories` decides
`skip`).
"""

from __future__ import annotations

import torch
from torch import nn

from nestdsl.compiler.modules.feature_map import FeatureMap
from nestdsl.compiler.modules.gates import Gates
from nestdsl.compiler.modules.ops import Stream
from nestdsl.compiler.plan import MemoryPlan


class MemoryModule(nn.Module):
    """Base: subclasses implement `init_state(B, like)` and `_span(...)`."""

    # A mapped residual memory's reads add the raw query (`skip`); a group of memories adds
    # each member's after splitting the joined answer, so its joined call does not.
    adds_skip = True

    def __init__(self, plan: MemoryPlan):
        super().__init__()
        self.plan = plan
        self.key = plan.name
        self.lowered = plan.options  # everything static, decided by `lower_memories`
        self.gates = Gates(plan.memory, plan.heads, self.lowered.channel_gates)
        self.per_channel = bool(self.lowered.channel_gates)  # run as H * V one-channel heads
        self.stop_gradient = self.lowered.stop_gradient
        o = self.lowered
        self.phi = FeatureMap(o.feature_map, o.degree, plan.key_dim, plan.heads)

    # ---------------------------------------------------------------- helpers for subclasses

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, d]` (one head, head axis omitted) or `[B, T, H, d]` -> `[B, T, H, d]`, in at
        least float32: memory updates accumulate over the whole context, and the triangular
        solves of the delta rules have no 16-bit kernels."""
        x = x.float() if x.dtype in _HALF else x
        return x.unsqueeze(2) if x.dim() == 3 else x

    def write_inputs(self, env: dict):
        """Keys φ(k) and values `[B, T, H, d]` from the block, detached for stop-gradient
        writes; with `skip` the values are the targets of the memory without its skip path."""
        mem = self.plan.memory
        raw = self.heads_first(env[mem.keys])  # [B, T, H, d]
        k = self.phi(raw)  # [B, T, H, width(φ)]
        v = self.heads_first(env[mem.values])
        if self.lowered.skip and self.lowered.objective != "dot":
            v = v - raw  # N(MLP(φ(k))) - (v - k) = M(k) - v
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
        raw = [self.heads_first(q) for q, _ in reads]  # [B, T, H, d]
        queries = [(self.phi(r), order, q.dim() == 3)
                   for r, (q, order) in zip(raw, reads)]  # fmt: skip
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
        outs = [self._skip_path(o, r) for o, r in zip(outs, raw)]
        return [o.squeeze(2) if squeeze else o for o, (_, _, squeeze) in zip(outs, queries)]

    def read_state(self, query: torch.Tensor, order: str, stream: Stream) -> torch.Tensor:
        """Answer a read from the state carried in (a feedback read: no write of this span)."""
        with _full_precision(env={"query": query}):
            raw = self.heads_first(query)  # [B, T, H, d]
            out = self._read_state(self.phi(raw), order, stream)
            out = self._skip_path(out, raw)
        return (out.squeeze(2) if query.dim() == 3 else out).to(query.dtype)

    def _skip_path(self, out: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """A read plus the raw query `[B, T, H, d]` when the memory is `x + N(MLP(φ(x)))`."""
        return out + raw if self.lowered.skip and self.adds_skip else out

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
