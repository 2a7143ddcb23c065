"""Prefixes along time (Titans persistent memory and MAC): build and drop a prefixed region.

`with_prefix` makes a region whose time axis holds, before the sequence, the time-less prefixes
(persistent tokens: once per sequence, or once per segment) and, before every position, one
position per per-token prefix (interleaved, so causal attention over the region stays causal:
position t sees the retrieved h_s of s <= t only). `drop_prefix` keeps the sequence positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Region:
    n_persistent: int  # time-less prefix positions at a region start
    n_per_token: int  # prefix positions before every sequence position
    segment: int | None  # tokens per segment (a region starts each segment), or None

    def starts_at(self, base_pos: int) -> bool:
        return base_pos % self.segment == 0 if self.segment else base_pos == 0

    def position(self, base_pos: int) -> int:
        """Region position of base position `base_pos` (what rope, convs, memories see)."""
        stride = 1 + self.n_per_token
        if not self.segment:
            return (self.n_persistent if base_pos > 0 else 0) + stride * base_pos
        seg, within = divmod(base_pos, self.segment)
        per_segment = self.n_persistent + stride * self.segment
        return seg * per_segment + (self.n_persistent if within else 0) + stride * within

    def build(self, x, persistent: list[torch.Tensor], per_token: list[torch.Tensor], base_pos):
        """x `[B, T, d]` -> region `[B, P + (1+n)T, d]`."""
        B, T = x.shape[:2]
        stacked = torch.stack([*per_token, x], dim=2)  # [B, T, 1+n, d]
        body = stacked.reshape(B, T * (1 + len(per_token)), *x.shape[2:])
        if not persistent or not self.starts_at(base_pos):
            return body
        head = torch.cat([p.to(x.dtype).expand(B, *p.shape) for p in persistent], dim=1)
        return torch.cat([head, body], dim=1)

    def drop(self, y: torch.Tensor, base_pos: int, T: int) -> torch.Tensor:
        """Region `[B, L, ...]` -> the sequence positions `[B, T, ...]`."""
        if self.n_persistent and self.starts_at(base_pos):
            y = y[:, self.n_persistent :]
        stride = 1 + self.n_per_token
        return y.reshape(y.shape[0], T, stride, *y.shape[2:])[:, :, -1]
