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


class MambaDecay(nn.Module):
    """The data-dependent log-decay of Mamba2 and Gated DeltaNet: `g = -exp(A) softplus(y + dt_bias)`.

    One learned A and dt_bias per channel of the last axis (per head for a `[n_heads]` gate).
    Initialised as Mamba2 (Dao & Gu 2024, its reference code) and Gated DeltaNet (Yang et al.
    2024) do: A ~ U(1, 16) stored as log A, and dt = softplus(dt_bias) log-uniform in
    [1e-3, 1e-1] (floored at 1e-4), so at the start the decay exp(g) = exp(-A dt) lies in
    about [0.2, 0.999] with most heads above 0.9: the memory keeps what it wrote long enough to
    learn to use it. Both are 1-D, so the optimizer does not weight-decay them.
    """

    A_RANGE = (1.0, 16.0)
    DT_RANGE = (1e-3, 1e-1)
    DT_FLOOR = 1e-4

    def __init__(self, channels: int):
        super().__init__()
        a = torch.empty(channels).uniform_(*self.A_RANGE)  # [C]
        lo, hi = (math.log(r) for r in self.DT_RANGE)
        dt = torch.exp(torch.rand(channels) * (hi - lo) + lo).clamp(min=self.DT_FLOOR)  # [C]
        self.A_log = nn.Parameter(torch.log(a))
        # softplus^{-1}(dt) = dt + log(1 - exp(-dt)): the bias that makes softplus give dt.
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return -torch.exp(self.A_log) * F.softplus(y + self.dt_bias)  # [..., C], <= 0

    def extra_repr(self) -> str:
        return f"channels={self.A_log.numel()}"


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
            elif name == "mamba_decay":
                post[str(i)] = MambaDecay(self.out_shape[-1])
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
