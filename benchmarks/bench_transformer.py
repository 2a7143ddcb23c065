"""Does the DSL cost anything at run time? Compiled `transformer` spec vs the same model by hand.

Prints a markdown table of forward+backward time per step for both and their ratio (target:
at most 1.05). The hand-written model has the same configuration and the same parameter count
(checked), so the only difference is how the graph is executed.

    python benchmarks/bench_transformer.py [--steps 20] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

import nestdsl


class HandBlock(nn.Module):
    def __init__(self, d, h, dh, ff):
        super().__init__()
        self.h, self.dh = h, dh
        self.n1, self.n2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.q, self.k, self.v = (nn.Linear(d, h * dh, bias=False) for _ in range(3))
        self.o = nn.Linear(h * dh, d, bias=False)
        self.a, self.b = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
        self.f = nn.Linear(ff, d, bias=False)
        inv = 1.0 / (10000.0 ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
        self.register_buffer("inv", inv, persistent=False)

    def rope(self, x):  # [B, T, H, D]
        t = torch.arange(x.shape[1], dtype=torch.float64)
        ang = torch.outer(t, self.inv)
        cos, sin = ang.cos().float()[None, :, None], ang.sin().float()[None, :, None]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)

    def forward(self, x):
        B, T, _ = x.shape
        h = self.n1(x)
        q = self.rope(self.q(h).view(B, T, self.h, self.dh)).transpose(1, 2)
        k = self.rope(self.k(h).view(B, T, self.h, self.dh)).transpose(1, 2)
        v = self.v(h).view(B, T, self.h, self.dh).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(o.transpose(1, 2).reshape(B, T, -1))
        h2 = self.n2(x)
        return x + self.f(F.silu(self.a(h2)) * self.b(h2))


class HandTransformer(nn.Module):
    def __init__(self, vocab, d, h, dh, ff, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(HandBlock(d, h, dh, ff) for _ in range(layers))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def step_time(model, tokens, steps, compiled: bool) -> float:
    def once():
        out = model(tokens)
        logits = out[0] if compiled else out
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()

    for _ in range(3):
        once()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]  # median: robust to a noisy shared CPU


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    checked = nestdsl.load("transformer")
    dims = checked.spec.dims
    compiled = nestdsl.compile(checked)
    hand = HandTransformer(dims["vocab"], dims["d_model"], dims["n_heads"], dims["d_head"],
                           dims["d_ff"], dims["n_layers"])  # fmt: skip
    n_c = sum(p.numel() for p in compiled.parameters())
    n_h = sum(p.numel() for p in hand.parameters())
    assert n_c == n_h, f"parameter counts differ: compiled {n_c}, hand {n_h}"
    tokens = torch.randint(0, dims["vocab"], (args.batch, args.seq))
    rows = []
    for _ in range(2):  # alternate to share the machine's noise fairly
        rows.append((step_time(compiled, tokens, args.steps, True),
                     step_time(hand, tokens, args.steps, False)))  # fmt: skip
    t_c = min(r[0] for r in rows)
    t_h = min(r[1] for r in rows)
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    print(f"config: transformer spec, {n_c:,} parameters, batch {args.batch} x {args.seq} tokens,"
          f" forward+backward, median of {args.steps} steps\n")  # fmt: skip
    print("| model | ms / step | tokens / s |")
    print("|---|---:|---:|")
    for name, t in (("compiled spec", t_c), ("hand-written", t_h)):
        print(f"| {name} | {t * 1e3:.1f} | {args.batch * args.seq / t:,.0f} |")
    print(f"\nratio compiled / hand = {t_c / t_h:.3f} (target <= 1.05)")
    _ = math


if __name__ == "__main__":
    main()
