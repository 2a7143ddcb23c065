"""Torch modules for the block ops of the spec language (nestdsl.spec.ops).

Every op maps `[B, T, *shape]` tensors to `[B, T, *shape']`. Ops that look back in time (the
short convolution, rotary positions) take a `Stream` giving the absolute position and the
state carried between calls, so that feeding a sequence in pieces equals feeding it whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Stream:
    """What a layer needs to continue a sequence: position, carried state, and the new state."""

    pos: int  # tokens of this sequence seen before this call
    state: dict[str, torch.Tensor]  # carried in (read-only)
    new_state: dict[str, torch.Tensor] = field(default_factory=dict)  # carried out
    # Weights of task-loss memories used in this span (the model differentiates the loss by them).
    task_weights: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    # True when the outer loss will be differentiated through inner gradients (second order).
    second_order: bool = False

    base_pos: int = 0  # position on the sequence's own axis (pos may be a prefixed region's)

    def get(self, key: str) -> torch.Tensor | None:
        """The latest value: written earlier in this call, else carried in (None if reset)."""
        if key in self.new_state:
            return self.new_state[key]
        return self.state.get(key)

    def put(self, key: str, value: torch.Tensor) -> None:
        self.new_state[key] = value


def unary(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "l2norm":
        return F.normalize(x, dim=-1, eps=1e-6)
    if name == "neg":
        return -x
    if name == "logsigmoid":
        return F.logsigmoid(x)
    return getattr(F, name)(x) if name in ("silu", "gelu", "relu", "softplus") else getattr(
        torch, name
    )(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis (features), as the spec's `layernorm` op."""


class ShortConv(nn.Module):
    """Causal depthwise convolution over time; the last `kernel - 1` inputs are carried state."""

    def __init__(self, shape: tuple[int, ...], kernel: int, key: str):
        super().__init__()
        self.shape, self.kernel, self.key = shape, kernel, key
        channels = math.prod(shape)
        self.weight = nn.Parameter(torch.randn(channels, kernel) / math.sqrt(kernel))
        with torch.no_grad():  # start near the identity so deep stacks train from step one
            self.weight[:, -1] += 1.0

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        B, T = x.shape[:2]
        flat = x.reshape(B, T, -1)  # [B, T, C]
        past = stream.get(self.key)
        if past is None:
            past = flat.new_zeros(B, self.kernel - 1, flat.shape[-1])
        full = torch.cat([past, flat], dim=1)  # [B, k-1+T, C]
        stream.put(self.key, full[:, full.shape[1] - (self.kernel - 1) :])
        y = F.conv1d(full.transpose(1, 2), self.weight.unsqueeze(1), groups=flat.shape[-1])
        return y.transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}, kernel={self.kernel}"


class Linear(nn.Module):
    """`y = x W` over the flattened feature axes, reshaped to `out`, then the `then:` post-ops."""

    def __init__(self, in_shape, out_shape, bias, then: list[str], key: str):
        """`bias`: False, True (torch's default init) or a spec `BiasInit` (starts at `init`)."""
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.proj = nn.Linear(math.prod(in_shape), math.prod(out_shape), bias=bool(bias))
        if hasattr(bias, "init"):
            nn.init.constant_(self.proj.bias, bias.init)
        self.then = list(then)
        post = {}
        for i, name in enumerate(then):
            if name == "short_conv":
                post[str(i)] = ShortConv(self.out_shape, 4, f"{key}.conv{i}")
            elif name == "rmsnorm":
                post[str(i)] = RMSNorm(self.out_shape[-1])
        self.post = nn.ModuleDict(post) if post else None

    def forward(self, x: torch.Tensor, in_ndim: int, stream: Stream) -> torch.Tensor:
        lead = x.shape[: x.dim() - in_ndim]
        y = self.proj(x.reshape(*lead, -1)).reshape(*lead, *self.out_shape)
        for i, name in enumerate(self.then):
            module = self.post[str(i)] if self.post is not None and str(i) in self.post else None
            if isinstance(module, ShortConv):
                y = module(y, stream)
            elif module is not None:
                y = module(y)
            else:
                y = unary(name, y)
        return y

    def extra_repr(self) -> str:
        return f"out={list(self.out_shape)}, then={self.then}"


class Rope(nn.Module):
    """Rotary position embedding on `[B, T, H, D]`, at absolute positions of the stream."""

    def __init__(self, dim: int, base: float):
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        T = x.shape[1]
        t = torch.arange(stream.pos, stream.pos + T, dtype=torch.float64, device=x.device)
        angles = torch.outer(t, self.inv_freq.to(x.device))  # [T, D/2]
        cos = angles.cos().to(x.dtype)[None, :, None, :]
        sin = angles.sin().to(x.dtype)[None, :, None, :]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.flatten(-2)


class Aggregate(nn.Module):
    """Sum, mean or a learned weighted sum of parallel branches (NL eq. 74)."""

    def __init__(self, n: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "learned":
            self.weight = nn.Parameter(torch.full((n,), 1.0 / n))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == "learned":
            return sum(w * x for w, x in zip(self.weight, xs))
        total = sum(xs)
        return total / len(xs) if self.mode == "mean" else total

    def extra_repr(self) -> str:
        return self.mode
