"""Per-channel gates against per-head gates: forward + backward time on the CPU.

Per-channel gates run the per-head kernels with `heads × value_dim` one-channel heads
(compiler/modules/channels.py). This measures that price twice: the gated delta rule's chunk
form alone (per-head gates against per-channel ones through the split), and the whole
`gated-deltanet` model (d_model 128) against `docs/examples/gated-deltanet-channels.yaml`
(the same model with a per-channel, rank-16 decay). Prints a markdown table.

    python benchmarks/bench_channel_gates.py [--batch 4] [--tokens 256] [--threads 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.compiler.modules import channels
from nestdsl.kernels import api

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "gated-deltanet-channels.yaml"


def best_of(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def kernel_cases(B: int, T: int, H: int = 4, K: int = 32, V: int = 32):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))  # [B, T, H, d]
    k = F.normalize(k, dim=-1)
    beta = torch.rand(B, T, H, generator=gen)  # [B, T, H]
    g = -0.1 * torch.rand(B, T, H, V, generator=gen)  # [B, T, H, V] per channel

    def per_head():
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        o, _ = api.gated_delta_rule(*x, beta, g.mean(-1), scale=1.0, output_final_state=True)
        o.sum().backward()

    def per_channel():
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        o, _ = api.gated_delta_rule(
            channels.repeat_keys(x[0], V), channels.repeat_keys(x[1], V),
            channels.split_values(x[2]), channels.split_gate(beta, V), channels.split_gate(g, V),
            scale=1.0, output_final_state=True)  # fmt: skip
        channels.merge_out(o, H).sum().backward()

    return per_head, per_channel


def model_step(spec: str, B: int, T: int):
    model = nestdsl.compile(nestdsl.load(spec))
    tokens = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(0))

    def step():
        model.zero_grad()
        logits, _ = model(tokens)
        logits.float().logsumexp(-1).mean().backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, T = args.batch, args.tokens
    head, chan = kernel_cases(B, T)
    rows = [("gated_delta_rule (H=4, K=V=32)", best_of(head, args.reps), best_of(chan, args.reps))]
    rows.append(("model: gated-deltanet vs gated-deltanet-channels",
                 best_of(model_step("gated-deltanet", B, T), args.reps),
                 best_of(model_step(str(EXAMPLE), B, T), args.reps)))  # fmt: skip
    print(f"forward + backward, B={B}, T={T}, {args.threads} thread(s), best of {args.reps}\n")
    print("| what | per head (ms) | per channel (ms) | ratio |\n|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a * 1e3:.0f} | {b * 1e3:.0f} | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
