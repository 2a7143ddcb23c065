"""Memories that run on the matrix-memory kernels: softmax caches and per-token matrix memories.

- `cache` + `softmax` is causal (optionally windowed) attention (NL eq. 62-63);
- matrix + `dot` + `gd` is linear attention (NL eq. 14-18), + `l2` is the delta rule, and
  with local decay the gated delta rule (reference §6). Reads use the state after the token's
  write (`write_then_read`) or before it (`read_then_write`, equal to `chunk_start` here since
  the chunk is one token).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from nestdsl.compiler.modules import channels
from nestdsl.compiler.modules.memory_base import MemoryModule
from nestdsl.kernels import api
from nestdsl.spec.memory import IdentityInit, LearnedInit


class CacheMemory(MemoryModule):
    """Keeps every (k, v) pair (or the last `window`), read by softmax."""

    CARRIED = ("k", "v")

    def __init__(self, plan):
        super().__init__(plan)
        self.window = plan.memory.structure.window
        self.sinks = plan.memory.structure.sinks

    def _span(self, env, queries, stream, offset, T):
        k, v = self.write_inputs(env)
        past_k, past_v = self.state_of(stream, "k"), self.state_of(stream, "v")
        cache = None if past_k is None else (past_k, past_v)
        outs = []
        # The fused CPU attention has no double backward; second-order training needs the math one.
        for q, _ in queries:
            with sdpa_kernel(SDPBackend.MATH) if stream.second_order else contextlib.nullcontext():
                o, new = api.softmax_attention(q, k, v, window=self.window, sinks=self.sinks,
                                               initial_state=cache, output_final_state=True)  # fmt: skip
            outs.append(o)
        stream.put(f"{self.key}.k", new[0])
        stream.put(f"{self.key}.v", new[1])
        return outs


class MatrixMemory(MemoryModule):
    """A `[H, K, V]` state per sequence, updated every token by a matrix-memory kernel.

    With `normalize` (Katharopoulos) the values carry one more channel of ones, so the state's
    last column is the key sum `z_t = Σ φ(k_i)` (with the same gates), and a read divides by
    `φ(q)·z_t`."""

    NORM_EPS = 1e-6  # as Katharopoulos et al.: the denominator is positive, this only guards 0

    def __init__(self, plan):
        super().__init__(plan)
        self.normalize = self.lowered.normalize
        k_dim = self.lowered.key_dim
        v_dim = plan.value_dim + int(self.normalize)
        init = plan.memory.init
        if isinstance(init, LearnedInit):
            self.initial = nn.Parameter(torch.zeros(plan.heads, k_dim, v_dim))
        else:
            eye = torch.eye(k_dim, v_dim) if isinstance(init, IdentityInit) else None
            start = torch.zeros(plan.heads, k_dim, v_dim) if eye is None else eye.expand(
                plan.heads, -1, -1).clone()  # fmt: skip
            self.register_buffer("initial", start, persistent=False)

    def _state(self, stream, like):
        S = self.state_of(stream, "S")
        if S is None:
            S = self.initial.to(like.dtype).unsqueeze(0).expand(like.shape[0], -1, -1, -1)
        return S

    def _kernel(self, q, k, v, env, S0):
        kind = self.plan.kernel
        if kind == "linear_attention":  # S_t = S_{t-1} + k_t (θ_t v_t)^T: θ scales the values
            lr = self.gate("lr", env, k, 1.0)  # [B, T, H] or per channel [B, T, H, V]
            return api.linear_attention(q, k, v * (lr if lr.dim() == 4 else lr.unsqueeze(-1)),
                                        scale=1.0, initial_state=S0, output_final_state=True)  # fmt: skip
        beta = self.gate("lr", env, k, 1.0)
        g = None
        if kind == "gated_delta_rule":
            g = self.gate("log_decay", env, k)
            if g is None:
                g = torch.log1p(-self.gate("forget", env, k).clamp(max=1 - 1e-6))
        if self.per_channel:  # one head per value channel (channels.py)
            H, V = v.shape[2], v.shape[3]
            o, S = self._delta(kind, channels.repeat_keys(q, V), channels.repeat_keys(k, V),
                               channels.split_values(v), channels.split_gate(beta, V),
                               None if g is None else channels.split_gate(g, V),
                               channels.split_kv_state(S0))  # fmt: skip
            return channels.merge_out(o, H), channels.merge_kv_state(S, H)
        return self._delta(kind, q, k, v, beta, g, S0)

    @staticmethod
    def _delta(kind, q, k, v, beta, g, S0):
        if kind == "delta_rule":
            return api.delta_rule(q, k, v, beta, scale=1.0, initial_state=S0,
                                  output_final_state=True)  # fmt: skip
        return api.gated_delta_rule(q, k, v, beta, g, scale=1.0, initial_state=S0,
                                    output_final_state=True)  # fmt: skip

    def _read_state(self, q, order, stream):
        return self._normalized(torch.einsum("bhkv,bthk->bthv", self._state(stream, q), q))

    def _normalized(self, o: torch.Tensor) -> torch.Tensor:
        """Numerator over denominator when the last channel is `φ(q)·z` (see the class doc)."""
        return o[..., :-1] / (o[..., -1:] + self.NORM_EPS) if self.normalize else o

    def _span(self, env, queries, stream, offset, T):
        k, v = self.write_inputs(env)
        if self.normalize:
            v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
        S0 = self._state(stream, k)
        outs, final = [], None
        for q, order in queries:
            if order == "write_then_read":
                o, final = self._kernel(q, k, v, env, S0)
            else:  # o_t = S_{t-1} q_t: the write-then-read answer to q_{t+1}, shifted by one
                first = torch.einsum("bhkv,bhk->bhv", S0, q[:, 0]).unsqueeze(1)
                shifted = torch.cat([q[:, 1:], q[:, :1]], dim=1)
                o, final = self._kernel(shifted, k, v, env, S0)
                o = torch.cat([first, o[:, :-1]], dim=1)
            outs.append(self._normalized(o))
        if final is None:
            _, final = self._kernel(k[:, :1].expand_as(k), k, v, env, S0)
        stream.put(f"{self.key}.S", final)
        return outs
