"""How fast could each spec's training step be on this CPU? The time of its matrix products alone.

One training step of each spec (bench_models.py's size and step: forward, loss, backward,
AdamW) is recorded: every matrix product it calls (mm, bmm, their fused adds, convolutions,
attention and triangular solves, forward and backward) with its operands' shapes. Each
distinct call is then timed alone on fresh contiguous operands, the fastest of ``--reps`` runs,
and counted as often as the step makes it. The sum is what the step would take if it were
nothing but its products, each at its best speed here. The hand-written Transformer++'s whole
step, timed in the same process, divided by that sum is the largest ``x hand`` the spec's
algorithm allows on this machine: elementwise ops, copies, autograd and Python only add to
its step. The ``x hand`` targets of issue 13 above that bound cannot be met without changing
what the spec computes (its chunk and segment sizes set the products' shapes).

Also printed: MFLOP per token (bench_models.count_flops) and the rate the products reach
alone. Best-of-N timings of single ops, taken in one process, move little with the load.

    python benchmarks/bench_bound.py --specs hand,titans-lmm,titans-mac,hope-attention,hope
    python benchmarks/bench_bound.py --specs hand,hope --size d_model=64,n_heads=2,d_head=32,n_layers=2 --seq-len 128
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import torch
from bench_models import HAND, SIZE, count_flops, make_step
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
PRODUCTS = {
    aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution, aten.convolution_backward,
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten.linalg_solve_triangular,
}  # fmt: skip


class Operand:
    """A tensor argument as recorded: its shape and dtype (replayed as a fresh contiguous one)."""

    def __init__(self, t: torch.Tensor):
        self.shape, self.dtype = tuple(t.shape), t.dtype

    def __repr__(self) -> str:
        return f"T{self.shape}{self.dtype}"

    def make(self) -> torch.Tensor:
        if self.dtype == torch.bool:  # an attention mask: let every position through
            return torch.ones(self.shape, dtype=torch.bool)
        if not self.dtype.is_floating_point:
            return torch.zeros(self.shape, dtype=self.dtype)
        return torch.randn(self.shape, dtype=self.dtype)


def _template(x):
    if isinstance(x, torch.Tensor):
        return Operand(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_template(y) for y in x)
    return x


def _fresh(x):
    if isinstance(x, Operand):
        return x.make()
    if isinstance(x, (list, tuple)):
        return type(x)(_fresh(y) for y in x)
    return x


class Recorder(TorchDispatchMode):
    """Counts every product call of the code run under it by (op, operand shapes, arguments)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.templates: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in PRODUCTS or func in PRODUCTS:
            args_t, kwargs_t = _template(args), {k: _template(v) for k, v in kwargs.items()}
            key = (str(func), repr(args_t), repr(sorted(kwargs_t.items())))
            self.calls[key] += 1
            self.templates[key] = (func, args_t, kwargs_t)
        return func(*args, **kwargs)


def best_time(func, args_t, kwargs_t, reps: int) -> float:
    """The fastest of ``reps`` calls on fresh operands (one warm call first; an in-place
    product adds into the same fresh tensor each time, the same work)."""
    args, kwargs = _fresh(args_t), {k: _fresh(v) for k, v in kwargs_t.items()}
    func(*args, **kwargs)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        func(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def products_time(step, reps: int) -> tuple[float, int]:
    """(seconds one step spends in its products, each timed alone; number of product calls)."""
    recorder = Recorder()
    with recorder:
        step()
    total = 0.0
    with torch.no_grad():
        for key, n in recorder.calls.items():
            total += n * best_time(*recorder.templates[key], reps)
    return total, sum(recorder.calls.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default="hand,titans-lmm,titans-mac,hope-attention,hope")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", default=",".join(f"{k}={v}" for k, v in SIZE.items()))
    ap.add_argument("--reps", type=int, default=5, help="timed calls per distinct product (best)")
    ap.add_argument("--hand-steps", type=int, default=5, help="hand-written steps timed (best)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    SIZE.clear()
    SIZE.update({k: int(v) for k, v in (kv.split("=") for kv in args.size.split(","))})
    args.device = "cpu"
    names = [HAND, *[n for n in args.specs.split(",") if n != HAND]]
    T, tokens = args.seq_len, args.batch * args.seq_len
    load = os.getloadavg()[0]

    hand = make_step(HAND, args, T)
    hand()
    hand_step = min(hand() for _ in range(args.hand_steps))
    rows = []
    for name in names:
        step = hand if name == HAND else make_step(name, args, T)
        step()  # warm: lazy buffers and the optimizer's state
        flops = count_flops(step)
        seconds, calls = products_time(step, args.reps)
        rows.append((name, flops / tokens / 1e6, calls, seconds, flops / seconds / 1e9,
                     hand_step / seconds))  # fmt: skip
        print(f"{name}: {rows[-1][1]:.1f} MFLOP/token, products {seconds:.3f} s per step",
              flush=True)  # fmt: skip

    sizes = ", ".join(f"{k} {v}" for k, v in SIZE.items())
    print(f"\nconfig: {sizes}; B={args.batch}, T={T}; {args.threads} thread(s); best of "
          f"{args.reps} per product; hand-written step {hand_step:.3f} s (best of "
          f"{args.hand_steps}); load average {load:.2f} -> {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| spec | MFLOP/token | product calls per step | products alone, s per step "
          "| their GFLOP/s | bound on x hand |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, mflop, calls, seconds, rate, bound in rows:
        label = "hand-written Transformer++" if name == HAND else f"`{name}`"
        print(f"| {label} | {mflop:,.1f} | {calls:,} | {seconds:.3f} | {rate:.1f} | {bound:.3f} |")


if __name__ == "__main__":
    main()
