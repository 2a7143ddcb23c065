"""A group of deep memories run as one kernel call, their heads side by side (group_memories).

Per head, a deep memory's update and reads depend only on that head's keys, values, gates and
weights (Titans eq. 13; Hope eq. 88 for each of M_k, M_v, M_eta, M_alpha), so memories that
`group_memories` found equal in everything else are one memory of their summed heads: this
module concatenates the members' keys, values, gates, initial states and carried state along
the head axis, runs one `DeepMemory` span (chunks, replay, resets and streaming included) or
one feedback read, and splits the answers back per member. The group's state is joined once
per layer call and split back to the members' own keys when the layer's call ends (`flush`),
not at every sequential segment; so the state a grouped model returns is the ungrouped
model's, and `reset: never`, resets and checkpoints see no difference.
"""

from __future__ import annotations

import dataclasses

import torch

from nestdsl.compiler.modules.memory_deep import DeepMemory
from nestdsl.compiler.modules.ops import Stream
from nestdsl.kernels.deep_memory import MOMENTUM_RULES

K, V = "group.k", "group.v"  # the concatenated write inputs in the span's environment
GATES = tuple(f"group.{g}" for g in DeepMemory.GATES)
# The head axis of each kind of state entry: weights and momenta [B, H, out, in]; a chunk's
# tokens so far and an Omega window's tokens [B, n, H, ...].
HEAD_AXIS = {"W": 1, "S": 1, "anchor_W": 1, "anchor_S": 1, "tail": 2, "window": 2}


class MemoryGroup:
    """Runs its members (modules of the layer, which keep their parameters) as one call."""

    def __init__(self, group, members: list[DeepMemory]):
        self.plan = group
        self.members = members
        self.heads = [m.plan.heads for m in members]
        first = members[0].plan
        plan = dataclasses.replace(first, name=f"{first.name.rsplit('.', 1)[0]}.{group.name}",
                                   decl=group.name, heads=group.heads)  # fmt: skip
        # Built outside the module tree: it computes with the members' parameters only.
        self.call = _GroupCall(plan, self)
        self.call.in_region = members[0].in_region
        self._joined_state: tuple[Stream, Stream] | None = None  # (the layer's, the group's)
        self._pending: tuple[int, dict] | None = None  # a deferred write: (end, empty inputs)

    def run(self, env: dict, reads: list[list[tuple[torch.Tensor, str]]], stream: Stream,
            T: int | None = None) -> list[list[torch.Tensor]]:  # fmt: skip
        """Learn from the span; `reads[i]` is one grouped read (one query per member); the
        answers come back the same way, each in its member's query layout."""
        with torch.autocast(device_type=_device(env), enabled=False):
            inputs = [m.write_inputs(env) for m in self.members]  # ([B, T, H, d] k, v) each
            gates = [m._gates(env, k) for m, (k, _) in zip(self.members, inputs)]
            span = {K: torch.cat([k for k, _ in inputs], 2),  # [B, T, sum H, d]
                    V: torch.cat([v for _, v in inputs], 2),
                    **{g: torch.cat([gs[i] for gs in gates], 2)  # [B, T, sum H]
                       for i, g in enumerate(GATES)}}  # fmt: skip
            T = span[K].shape[1] if T is None else T
            inner = self._state(stream)
            if self.plan.defer and inner.pos % self.call.chunk + T < self.call.chunk:
                self._defer(span, inner, T)
                return []
            queries = [(self._joined([q for q, _ in qs]), qs[0][1]) for qs in reads]
            outs = self.call._run_span(span, queries, inner, T)
            self._pending = None
        return [self._split(o, qs) for o, qs in zip(outs, reads)]

    def read_state(self, queries: list[torch.Tensor], order: str, stream: Stream):
        """One feedback read of every member (one query each) from the carried state."""
        with torch.autocast(device_type=queries[0].device.type, enabled=False):
            out = self.call._read_state(self._joined(queries), order, self._state(stream))
        return self._split(out, [(q, order) for q in queries])

    def flush(self, stream: Stream) -> None:
        """End of the layer's call: the group's new state, split back to the members' keys."""
        if self._joined_state is None or self._joined_state[0] is not stream:
            return
        inner = self._joined_state[1]
        self._joined_state = None
        if self._pending is not None:  # the call ends inside a chunk: its state there
            inner.pos, empty = self._pending
            self._pending = None
            self.call._span(empty, [], inner, 0, 0)
        prefix = self.call.key + "."
        for key, value in inner.new_state.items():
            name = key[len(prefix) :]
            parts = [None] * len(self.members) if value is None else value.split(
                self.heads, dim=HEAD_AXIS[_kind(name)])  # fmt: skip
            for m, part in zip(self.members, parts):
                stream.put(f"{m.key}.{name}", part)

    # ---------------------------------------------------------------- heads side by side

    def _joined(self, queries: list[torch.Tensor]) -> torch.Tensor:
        """One query per member, each through its member's feature map, side by side."""
        parts = [m.phi(m.heads_first(q)) for m, q in zip(self.members, queries)]
        return torch.cat(parts, 2)  # [B, T, sum H, d]

    def _split(self, out: torch.Tensor, pairs) -> list[torch.Tensor]:
        """The joined answer back in each member's query layout, with the raw query added
        where the member is a mapped residual memory (`x + N(MLP(φ(x)))`)."""
        parts = out.split(self.heads, dim=2)  # [B, T, H_i, d] each
        parts = [p + m.heads_first(q) if m.lowered.skip else p
                 for m, p, (q, _) in zip(self.members, parts, pairs)]  # fmt: skip
        return [(p.squeeze(2) if q.dim() == 3 else p).to(q.dtype)
                for p, (q, _) in zip(parts, pairs)]  # fmt: skip

    def _defer(self, span: dict, inner: Stream, T: int) -> None:
        """A span that ends inside its chunk: keep what `DeepMemory._span` keeps for the next
        span to replay (the chunk-start state and the chunk's inputs so far), without running
        the write; the chunk's end runs it once, or `flush` if the call ends first."""
        call, B = self.call, span[K].shape[0]
        if inner.pos % call.chunk == 0:  # a new chunk: its start state is the anchor
            W = call._load(inner, "W") or call.initial_weights(B, span[K])
            S = call._load(inner, "S")
            if call.rule in MOMENTUM_RULES and S is None:
                S = [torch.zeros_like(w) for w in W]
            call._store(inner, "anchor_W", W)
            call._store(inner, "anchor_S", S)
        for name, key in zip(("k", "v", *call.GATES), (K, V, *GATES)):
            past = inner.get(f"{call.key}.tail.{name}") if inner.pos % call.chunk else None
            t = span[key]  # [B, T, sum H, ...]
            inner.put(f"{call.key}.tail.{name}", t if past is None else torch.cat([past, t], 1))
        self._pending = (inner.pos + T, {key: t[:, :0] for key, t in span.items()})

    def _state(self, stream: Stream) -> Stream:
        """The group's stream: the members' state entries joined under the call's key the
        first time this layer call needs them, then carried until `flush`."""
        if self._joined_state is None or self._joined_state[0] is not stream:
            self._joined_state, self._pending = (stream, self._gathered(stream)), None
        inner = self._joined_state[1]
        inner.pos, inner.base_pos = stream.pos, stream.base_pos
        return inner

    def _gathered(self, stream: Stream) -> Stream:
        names = set()
        for m in self.members:
            prefix = m.key + "."
            names |= {k[len(prefix):] for k in (*stream.state, *stream.new_state)
                      if k.startswith(prefix)}  # fmt: skip
        state = {}
        for name in names:
            parts = [stream.get(f"{m.key}.{name}") for m in self.members]
            if all(p is None for p in parts):
                continue
            if any(p is None for p in parts):
                raise AssertionError(f"memory group {self.plan.name}: state `{name}` is carried "
                                     "for some members only (a bug in nestdsl)")  # fmt: skip
            state[f"{self.call.key}.{name}"] = torch.cat(parts, HEAD_AXIS[_kind(name)])
        return Stream(stream.pos, state, second_order=stream.second_order,
                      base_pos=stream.base_pos)  # fmt: skip


class _GroupCall(DeepMemory):
    """The one `DeepMemory` span of a group: its write inputs, gates and initial state are
    the members' side by side (its own, built by `DeepMemory.__init__`, are never used)."""

    def __init__(self, plan, group: MemoryGroup):
        super().__init__(plan)
        self._group = [group]  # a list: not a submodule

    def write_inputs(self, env):
        return env[K], env[V]

    adds_skip = False  # `MemoryGroup._split` adds each member's raw query

    def phi(self, x):
        return x  # the members' feature maps ran on their own keys and queries

    def _gates(self, env, like):
        return tuple(env[g] for g in GATES)

    def initial_weights(self, batch, like):
        starts = [m.initial_weights(batch, like) for m in self._group[0].members]
        return [torch.cat(ws, 1) for ws in zip(*starts)]  # [B, sum H, out, in] per layer


def _kind(name: str) -> str:
    kind = name.split(".")[0]
    if kind not in HEAD_AXIS:
        raise AssertionError(f"memory groups do not know the state entry `{name}` (a bug)")
    return kind


def _device(env: dict) -> str:
    return next((t.device.type for t in env.values() if torch.is_tensor(t)), "cpu")
