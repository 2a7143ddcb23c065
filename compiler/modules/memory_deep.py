"""Parametric memories updated by gradients: deep (MLP) and chunked matrix memories, and
memories whose weights only the outer level trains (CMS blocks are in memory_task.py).

Chunk semantics (Titans §3.2, Hope eqs. 90-91): every gradient inside a chunk is taken at the
chunk-start state. A span that starts inside a chunk replays the chunk's earlier tokens from
the chunk-start state (kept in the stream), so a sequence fed in pieces, split anywhere,
computes exactly what one pass computes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from nestdsl.compiler.modules import channels
from nestdsl.compiler.modules.memory_base import MemoryModule
from nestdsl.kernels.deep_memory import (
    MOMENTUM_RULES,
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory,
    init_params,
    initial_weights,
    memory_forward,
    visible_weights,
)
from nestdsl.kernels.titans_linear import titans_linear
from nestdsl.spec.memory import (
    GatedMLPStructure,
    IdentityInit,
    LearnedInit,
    MatrixStructure,
    MLPStructure,
    ZerosInit,
)

# Chunks per recomputed group of the chunk form (DeepMemoryOptions.recompute): training keeps
# one state per 8 chunks and 8 chunks of intermediates instead of every chunk's (titans-lmm at
# B=4, d_model 256: 4x less kept for backward, docs/benchmarks.md, issue 13). Muon forms C
# per-token weight matrices per layer and chunk and keeps every Newton-Schulz iterate, so it
# recomputes chunk by chunk. Spans of at most that many chunks (Hope's and MAC's segments)
# run the plain loop. The model turns the groups off for sequences it does not recompute
# (`DeepMemory.recompute_chunks`), except Muon's: atlas at its shipped size (B = 8, T = 128)
# keeps 3.83 GB without them and 0.78 GB with, for 1.1x the step.
RECOMPUTE = 8


def structure_of(plan, key_dim: int) -> MemoryStructure:
    """The kernel's MLP: keys of width `key_dim` (after the feature map), values of the
    memory's width. With a feature map on a residual memory (`options.skip`) the kernel runs
    the memory without its skip path (memory_base.py adds it back)."""
    st, o = plan.memory.structure, plan.options
    if isinstance(st, MatrixStructure):
        return MemoryStructure(key_dim, plan.value_dim, depth=1, activation="identity",
                               residual=False)  # fmt: skip
    residual = st.residual and not o.skip
    if isinstance(st, GatedMLPStructure):
        return MemoryStructure(key_dim, plan.value_dim, depth=2, expansion=st.expansion,
                               activation=st.activation, residual=residual, gated=True,
                               hidden_dim=o.hidden_dim)  # fmt: skip
    assert isinstance(st, MLPStructure)
    return MemoryStructure(key_dim, plan.value_dim, depth=st.depth, expansion=st.expansion,
                           activation=st.activation, residual=residual, norm=st.norm,
                           norm_eps=st.norm_eps,
                           hidden_dim=o.hidden_dim)  # fmt: skip


class Constants(nn.Module):
    """A list of constant tensors that follow the module's device and dtype (not saved)."""

    def __init__(self, tensors: list[torch.Tensor]):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(str(i), t, persistent=False)

    def __iter__(self):
        return iter(self._buffers.values())

    def __len__(self) -> int:
        return len(self._buffers)


class WeightsMemory(MemoryModule):
    """A memory with per-head weight matrices `[H, out, in]`: its initial (or only) state."""

    def __init__(self, plan):
        super().__init__(plan)
        self.structure = structure_of(plan, self.lowered.key_dim)
        init = plan.memory.init
        if isinstance(init, ZerosInit):
            start = [torch.zeros(plan.heads, o, i) for o, i in self.structure.shapes()]
        elif isinstance(init, IdentityInit):
            start = [torch.eye(o, i).expand(plan.heads, o, i).clone()
                     for o, i in self.structure.shapes()]  # fmt: skip
        else:
            start = init_params(self.structure, plan.heads, gain=self.lowered.init_gain)
        if isinstance(init, LearnedInit) or not isinstance(plan.every, int):
            frozen = plan.every == "never"
            self.initial = nn.ParameterList(nn.Parameter(w, requires_grad=not frozen)
                                            for w in start)  # fmt: skip
        else:  # a constant start (zeros, identity) is part of the spec, not a parameter
            self.initial = Constants(start)

    def initial_weights(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        return initial_weights([w.to(like.dtype) for w in self.initial], batch)

    def apply(self, weights, q: torch.Tensor) -> torch.Tensor:
        """M(q) with fixed weights: q `[B, T, H, d]` -> `[B, T, H, d_out]`."""
        y, _ = memory_forward(self.structure, weights, q.transpose(1, 2))
        return y.transpose(1, 2)

    def visible(self, weights):
        return weights

    def _read_state(self, q, order, stream):
        name = "anchor_W" if order == "chunk_start" and stream.pos % self.plan.chunk else "W"
        W = self._load(stream, name) or self.initial_weights(q.shape[0], q)
        return self.apply(self.visible(W), q)

    def _load(self, stream, name):
        if self.state_of(stream, f"{name}.0") is None:
            return None
        return [self.state_of(stream, f"{name}.{i}") for i in range(len(self.initial))]

    def _store(self, stream, name, tensors) -> None:
        if tensors is None:
            return
        for i, t in enumerate(tensors):
            stream.put(f"{self.key}.{name}.{i}", t)


class StaticMemory(WeightsMemory):
    """A memory on an `every: step` (or `never`) level: an MLP whose weights the outer
    optimizer trains (or nothing changes); a CMS with one frozen level is an FFN (NL §7.1)."""

    def _span(self, env, queries, stream, offset, T):
        return [self.apply(list(self.initial), q) for q, _ in queries]


class DeepMemory(WeightsMemory):
    """A memory learned in context by gradient steps on its objective (Titans, Hope, Miras)."""

    def __init__(self, plan):
        super().__init__(plan)
        o = self.lowered
        try:
            self.options = DeepMemoryOptions(
                structure=self.structure, objective=o.objective, p=o.p,
                delta=o.window_delta or 1.0, rule=o.rule, dgd_step=o.dgd_step,
                ns_steps=o.ns_steps, ns_kind=o.ns_kind, retention=o.retention or "l2",
                retention_mode=o.retention_mode, q_norm=o.q_norm, kl_scale=o.kl_scale,
                lag_token=o.lag_token, chunk_size=plan.chunk, window=o.window,
                anchored=o.anchored, recompute=1 if o.rule == "muon" else RECOMPUTE)  # fmt: skip
        except ValueError as err:
            raise AssertionError(f"`lower_memories` let memory `{plan.decl}` through, but the "
                                 f"kernel rejects it (a bug in nestdsl): {err}") from None
        # Read by the span and state methods of this class.
        o = self.options
        self.rule, self.retention, self.q_norm, self.kl_scale = (
            o.rule, o.retention, o.q_norm, o.kl_scale)  # fmt: skip
        self.chunk, self.window = o.chunk_size, o.window
        # The gates a span carries (and replays): `omega` only when the window has `positions`.
        self.gate_names = self.GATES + (("omega",) if "positions" in self.gates.sources else ())
        # Per-channel gates run one head per value channel (channels.py): the same options
        # with a one-channel structure (only matrix memories get here: lower_memories).
        self.split_options = None
        if self.per_channel:
            self.split_options = replace(o, structure=replace(o.structure, d_out=1))

    GATES = ("theta", "eta", "alpha", "delta", "gamma")

    def recompute_chunks(self, which: str) -> None:
        """Whether backward reruns this memory's chunks in groups of RECOMPUTE (Muon: one by
        one) instead of keeping every chunk's intermediates: `all`, `costly` (only Muon,
        whose chunks keep every Newton-Schulz iterate) or `none`; the model's choice per
        sequence length (model.py)."""
        muon = self.rule == "muon"
        on = which == "all" or (which == "costly" and muon)
        group = (1 if muon else RECOMPUTE) if on else 0
        self.options = replace(self.options, recompute=group)
        if self.split_options is not None:
            self.split_options = replace(self.split_options, recompute=group)

    def _gates(self, env, like):
        """Per-token `[B, T, H]` step size, momentum, forget gate, Huber threshold and the
        Omega window's token weight, and `[B, T, H, c]` its position weights when given."""
        theta = self.gate("lr", env, like, 1.0)
        eta = self.gate("momentum", env, like, 0.0)
        forget = self.gate("forget", env, like)
        if forget is None:
            log_decay = self.gate("log_decay", env, like)
            forget = like.new_zeros(theta.shape) if log_decay is None else -torch.expm1(log_decay)
        delta, gamma = self.gate("delta", env, like, 1.0), self.gate("weight", env, like, 1.0)
        if self.per_channel:  # [B, T, H, V] for every rule gate, so spans concatenate alike
            V = self.plan.value_dim
            theta, eta, forget = (g if g.dim() == 4 else g.unsqueeze(-1).expand(*g.shape, V)
                                  for g in (theta, eta, forget))  # fmt: skip
        gates = theta, eta, forget, delta, gamma
        return gates if len(self.gate_names) == 5 else (*gates, self.gate("positions", env, like))

    def _run(self, q, k, v, gates, weights, momentum, order, prefix=None):
        if not self.per_channel:
            return self._run_heads(q, k, v, gates, weights, momentum, order, prefix, self.options)
        # One head per value channel: keys repeated, values, gates and states split.
        H, V = v.shape[2], v.shape[3]
        gates = tuple(channels.split_gate(g, V) if i < 5 else channels.repeat_keys(g, V)
                      for i, g in enumerate(gates))  # fmt: skip
        if prefix is not None:
            prefix = [channels.repeat_keys(prefix[0], V), channels.split_values(prefix[1]),
                      channels.split_gate(prefix[2], V)]  # fmt: skip
        o, (W, S) = self._run_heads(
            channels.repeat_keys(q, V), channels.repeat_keys(k, V), channels.split_values(v),
            gates, [channels.split_weights(w) for w in weights],
            None if momentum is None else [channels.split_weights(m) for m in momentum],
            order, prefix, self.split_options)  # fmt: skip
        merge = [channels.merge_weights(w, H) for w in W]
        return channels.merge_out(o, H), (merge, None if S is None else [
            channels.merge_weights(m, H) for m in S])  # fmt: skip

    def _run_heads(self, q, k, v, gates, weights, momentum, order, prefix, options):
        theta, eta, alpha, delta, gamma, *positions = gates
        omega = {"omega": positions[0]} if positions else {}  # [B, T, H, c]
        if self.plan.kernel == "titans_linear":
            S0 = weights[0].transpose(-1, -2)  # W [B, H, V, K] -> S [B, H, K, V]
            M0 = None if momentum is None else momentum[0].transpose(-1, -2)
            o, (S, M) = titans_linear(q, k, v, theta, eta, alpha, chunk_size=self.chunk,
                                      scale=1.0, initial_state=S0, initial_momentum=M0,
                                      output_final_state=True)  # fmt: skip
            return o, ([S.transpose(-1, -2)], [M.transpose(-1, -2)])
        if self.plan.memory.window is None:
            # retention toward the initial state (`toward: init`) decays toward M_0
            anchor = self.initial_weights(q.shape[0], q) if options.anchored else None
            return deep_memory(q, k, v, theta, eta, alpha, weights, options, read=order,
                               momentum=momentum, output_final_state=True, delta=delta,
                               anchor=anchor)  # fmt: skip
        # An Omega window: its token weights and earlier tokens; over more than one token the
        # Huber threshold is the constant options.delta.
        return deep_memory(q, k, v, theta, eta, alpha, weights, options, read=order,
                           momentum=momentum, output_final_state=True, gamma=gamma, **omega,
                           delta=delta if self.window == 1 else None, window_prefix=prefix)  # fmt: skip

    def _span(self, env, queries, stream, offset, T):
        k, v = self.write_inputs(env)
        gates = self._gates(env, k)
        B = k.shape[0]
        pos = stream.pos + offset
        r = pos % self.chunk  # tokens of the current chunk already seen: replay them
        W = self._load(stream, "anchor_W" if r else "W") or self.initial_weights(B, k)
        S = self._load(stream, "anchor_S" if r else "S")
        if self.rule in MOMENTUM_RULES and S is None:
            S = [torch.zeros_like(w) for w in W]
        if r:
            past = [self.state_of(stream, f"tail.{n}") for n in ("k", "v", *self.gate_names)]
            k = torch.cat([past[0], k], 1)
            v = torch.cat([past[1], v], 1)
            gates = tuple(torch.cat([p, g], 1) for p, g in zip(past[2:], gates))
        n_all = k.shape[1]
        cut = n_all - (pos + T) % self.chunk  # end of the last complete chunk
        # The Omega window's tokens before the chunk start (kept relative to the anchor).
        prefix = None
        if self.window > 1 and self.state_of(stream, "window.k") is not None:
            prefix = [self.state_of(stream, f"window.{n}") for n in ("k", "v", "gamma")]
        # The Omega window's tokens before `cut`, the prefix of whatever starts there (gates[4]
        # is γ).
        cut_prefix = None
        if self.window > 1:
            seen = (k, v, gates[4]) if prefix is None else [
                torch.cat([p, x], 1) for p, x in zip(prefix, (k, v, gates[4]))]  # fmt: skip
            end = cut + (0 if prefix is None else prefix[0].shape[1])
            start = max(0, end - (self.window - 1))
            cut_prefix = [x[:, start:end] for x in seen]
        # A span that ends inside a chunk also leaves the state at the last chunk end (`cut`),
        # for the next call to replay from: the call is split there, so that state comes out of
        # the same pass (a second pass up to `cut` would redo, and keep for backward, all the
        # memory's work: Titans MAG's 4 persistent tokens put every training sequence's end
        # inside a chunk).
        split = 0 < cut < n_all
        mid = None

        def run(q, order):
            nonlocal mid
            if not split:
                return self._run(q, k, v, gates, W, S, order, prefix)
            head, tail = (tuple(g[:, :cut] for g in gates), tuple(g[:, cut:] for g in gates))
            o_head, mid = self._run(q[:, :cut], k[:, :cut], v[:, :cut], head, W, S, order, prefix)
            o_tail, end = self._run(q[:, cut:], k[:, cut:], v[:, cut:], tail, *mid, order,
                                    cut_prefix)  # fmt: skip
            return torch.cat([o_head, o_tail], 1), end

        outs, end_state = [], None
        for q, order in queries:
            q = torch.cat([q.new_zeros(B, r, *q.shape[2:]), q], 1) if r else q
            o, end_state = run(q, order)
            outs.append(o[:, r:])
        # A write with no read to answer: the state does not depend on the read order, and the
        # chunk-start read is the cheapest (the answers are dropped).
        if end_state is None:
            _, end_state = run(k, "chunk_start")
        if cut_prefix is not None:  # the next anchor's window
            for n, x in zip(("k", "v", "gamma"), cut_prefix):
                stream.put(f"{self.key}.window.{n}", x)
        self._store(stream, "W", end_state[0])
        self._store(stream, "S", end_state[1])
        # A span ending inside a chunk leaves the chunk-start state and the chunk's tokens so
        # far, for the next call to replay.
        tail = {"k": k, "v": v, **dict(zip(self.gate_names, gates, strict=True))}
        if cut < n_all:
            anchor = mid or (W, S)  # (W, S): no chunk completed in this span
            self._store(stream, "anchor_W", anchor[0])
            self._store(stream, "anchor_S", anchor[1])
            for name, t in tail.items():
                stream.put(f"{self.key}.tail.{name}", t[:, cut:])
        else:
            for name in tail:
                stream.put(f"{self.key}.tail.{name}", None)
        return outs

    def visible(self, weights):
        return [visible_weights(w, self.retention, self.q_norm, self.kl_scale) for w in weights]
