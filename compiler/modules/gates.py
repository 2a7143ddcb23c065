"""Step sizes and gates of a memory, from their source: constant, learned, or a block tensor.

A gate is per head `[B, T, H]`, or per channel `[B, T, H, V]` when `lower_memories` found its
block tensor to be `[heads, value_dim]` (one value per row of the state, Miras §5.4)."""

from __future__ import annotations

import torch
from torch import nn

from nestdsl.graph.build import memory_params
from nestdsl.spec.common import Learned


class Gates(nn.Module):
    """Resolves `lr`, `momentum`, `forget`, `log_decay`, `delta`, `weight` to `[B, T, H]`
    tensors (`[B, T, H, V]` for the roles in `channels`)."""

    def __init__(self, memory, heads: int, channels: tuple[str, ...] = ()):
        super().__init__()
        self.heads = heads
        self.channels = tuple(channels)
        # The Omega window's `positions` has one value per window position: [B, T, H, c].
        self.window = memory.window.tokens if memory.window is not None else 1
        self.sources = {}
        self.learned = nn.ParameterDict()
        for p in memory_params(memory):
            self.sources[p.role] = p.value
            if isinstance(p.value, Learned):
                n = heads if p.value.per == "head" else 1
                shape = (n, self.window) if p.role == "positions" else (n,)
                self.learned[p.role] = nn.Parameter(torch.full(shape, float(p.value.init)))

    def get(self, role: str, env: dict, like: torch.Tensor, default: float | None = None):
        """The gate as `[B, T, H]` (like's batch and time), or `default` filled, or None."""
        B, T = like.shape[:2]
        source = self.sources.get(role)
        if role == "positions":
            return self._positions(source, env, like, default)
        if source is None:
            return None if default is None else like.new_full((B, T, self.heads), default)
        if isinstance(source, Learned):
            return self.learned[role].to(like.dtype).expand(B, T, self.heads)
        if isinstance(source, str):
            g = env[source]
            if role in self.channels:  # [B, T, H, V]; one head may come without its axis
                return g.unsqueeze(2) if g.dim() == 3 else g
            return g.unsqueeze(-1).expand(B, T, self.heads) if g.dim() == 2 else g
        return like.new_full((B, T, self.heads), float(source))

    def _positions(self, source, env: dict, like: torch.Tensor, default: float | None):
        """ω `[B, T, H, c]`: the weight token t gives each window position t - i (ATLAS eq. 9)."""
        B, T = like.shape[:2]
        shape = (B, T, self.heads, self.window)
        if source is None:
            return None if default is None else like.new_full(shape, default)
        if isinstance(source, Learned):  # [H, c] or [1, c]
            return self.learned["positions"].to(like.dtype).expand(shape)
        if isinstance(source, str):  # [B, T, H, c], or [B, T, c] for one head
            g = env[source]
            return g.unsqueeze(2) if g.dim() == 3 else g
        return like.new_full(shape, float(source))

    def extra_repr(self) -> str:
        return ", ".join(f"{r}={_show(s)}" + (" per channel" if r in self.channels else "")
                         for r, s in self.sources.items())  # fmt: skip


def _show(source) -> str:
    return f"learned({source.init})" if isinstance(source, Learned) else str(source)
