"""Forward time of the chunk (dual) forms against the per-token loops, same chunk semantics.

Ops: the Titans linear memory with momentum (``titans_linear``) and a depth-2 residual gelu
MLP memory with the momentum rule and with the Muon rule (``deep_memory``). Both forms use
chunk_size 16, so they
compute the same function (gradients at the chunk-start weights); the loop steps token by
token, the chunk form loops over chunks only. Prints a markdown table; ``--quick`` runs a
tiny size for a smoke test.

    python benchmarks/bench_deep_memory.py [--quick] [--dim 32] [--threads N] [--reps 3]
                                           [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from nestdsl.kernels.deep_memory import (
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory,
    init_params,
    initial_weights,
)
from nestdsl.kernels.titans_linear import titans_linear_chunk, titans_linear_naive

CHUNK = 16


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def race(
    chunk: Callable[[], object], loop: Callable[[], object], rounds: int
) -> tuple[float, float]:
    """Best wall times (s) of the two forms, measured in alternation.

    Shared CPUs can slow down by an order of magnitude for seconds at a time; alternating
    the two forms exposes both to the same conditions, and the minimum over the rounds is
    the least disturbed estimate. The chunk form is timed 3x per round (it is fast).
    """
    chunk()  # warm-up: allocator, first-call dispatch
    best_chunk = best_loop = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        loop()
        best_loop = min(best_loop, time.perf_counter() - start)
        for _ in range(3):
            start = time.perf_counter()
            chunk()
            best_chunk = min(best_chunk, time.perf_counter() - start)
    return best_chunk, best_loop


def make_inputs(T: int, H: int, D: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "q": torch.randn(1, T, H, D, generator=gen),
        "k": F.normalize(torch.randn(1, T, H, D, generator=gen), dim=-1),
        "v": torch.randn(1, T, H, D, generator=gen),
        "theta": 0.1 * torch.rand(1, T, H, generator=gen),
        "eta": torch.rand(1, T, H, generator=gen),
        "alpha": 0.05 * torch.rand(1, T, H, generator=gen),
    }


def ops(H: int, D: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (chunk form, loop form), each taking the input dict."""
    structure = MemoryStructure(D, D, depth=2, expansion=2, activation="gelu", residual=True)
    weights = initial_weights(init_params(structure, H), 1)

    def titans(fn):
        return lambda x: fn(*x.values(), chunk_size=CHUNK)

    def mlp(backend, rule):
        options = DeepMemoryOptions(structure, rule=rule, chunk_size=CHUNK)
        return lambda x: deep_memory(*x.values(), weights, options, backend=backend)

    return {
        "titans_linear": (titans(titans_linear_chunk), titans(titans_linear_naive)),
        "deep_memory (2-layer MLP, momentum)": (mlp("chunk", "momentum"), mlp("naive", "momentum")),
        "deep_memory (2-layer MLP, muon)": (mlp("chunk", "muon"), mlp("naive", "muon")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, smoke test only")
    parser.add_argument("--dim", type=int, default=32, help="key / value width per head")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--reps", type=int, default=3, help="timing rounds (loop once, chunk 3x per round)"
    )
    parser.add_argument("--only", default="", help="run only the ops whose name contains this")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = (64, 128) if args.quick else (512, 2048, 8192)
    H, D = args.heads, args.dim

    print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"B=1, H={H}, D={D}, float32, chunk_size={CHUNK}, forward only (no autograd graph)\n")
    print("| op | T | chunk form (ms) | chunk tok/s | token loop (ms) | loop tok/s | speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    growth = {}
    for name, (chunk_fn, loop_fn) in ops(H, D).items():
        if args.only not in name:
            continue
        chunk_t = {}
        for T in lengths:
            x = make_inputs(T, H, D)
            with torch.no_grad():
                tc, tl = race(partial(chunk_fn, x), partial(loop_fn, x), args.reps)
            chunk_t[T] = tc
            print(
                f"| {name} | {T} | {tc * 1e3:.1f} | {T / tc:,.0f} | {tl * 1e3:.1f} | "
                f"{T / tl:,.0f} | {tl / tc:.1f}x |"
            )
        growth[name] = chunk_t[lengths[-1]] / chunk_t[lengths[-2]]
    ratio = lengths[-1] // lengths[-2]
    print()
    for name, g in growth.items():
        print(f"- {name}: chunk t({lengths[-1]}) / t({lengths[-2]}) = {g:.2f} (linear = {ratio})")


if __name__ == "__main__":
    main()
