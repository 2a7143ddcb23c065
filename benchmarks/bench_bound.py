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

A second figure adds the step's memory traffic: the bytes its ops write
(bench_models.count_written) at the rate this CPU writes the output of a large ``torch.add``.
It is an estimate, not a bound (outputs that stay in the caches are written faster), apt
where the written tensors are larger than the L2 cache. A third adds the step's op calls
(bench_models.count_ops, torch.profiler events) at the cost of the cheapest op, an add of two
16-number tensors: the floor of dispatch per call. Beside them, the spec's own step (best of
``--steps``) gives the measured ``x hand``; what the estimates leave out is autograd's
bookkeeping and Python between the ops. Also printed: MFLOP per token (bench_models.count_flops) and the rate the products
reach alone. Best-of-N timings, taken in one process, move little with the load.

    python benchmarks/bench_bound.py --specs hand,titans-lmm,titans-mac,hope-attention,hope
    python benchmarks/bench_bound.py --specs hand,hope --size d_model=64,n_heads=2,d_head=32,n_layers=2 --seq-len 128
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import torch
from bench_models import HAND, SIZE, count_flops, count_ops, count_written, make_step
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
PRODUCTS = {
    aten.mm, aten.addmm, aten.addmm_, aten.bmm, aten.baddbmm, aten.baddbmm_, aten.convolution,
    aten.convolution_backward,
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
        if func.overloadpacket in PRODUCTS:
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
    return min(_timed(lambda: func(*args, **kwargs)) for _ in range(reps))


def recorded_step(step) -> tuple[Recorder, int, int]:
    """One step under three dispatch modes at once: (its products recorded, FLOPs, bytes
    written); a step of a deep spec takes minutes here, so it is not taken three times."""
    recorder, written = Recorder(), {}

    def products():
        with recorder:
            step()

    def products_and_writes():
        written["bytes"] = count_written(products)

    flops = count_flops(products_and_writes)
    return recorder, flops, written["bytes"]


def products_time(recorder: Recorder, reps: int) -> float:
    """Seconds the recorded step spends in its products, each timed alone."""
    with torch.no_grad():
        return sum(n * best_time(*recorder.templates[key], reps)
                   for key, n in recorder.calls.items())  # fmt: skip


def write_rate() -> float:
    """Bytes per second this CPU writes as the output of an elementwise op on large tensors."""
    x, y, out = (torch.randn(2**25) for _ in range(3))  # 128 MB each, far beyond the caches
    return out.nbytes / min(_timed(lambda: torch.add(x, y, out=out)) for _ in range(5))


def op_cost() -> float:
    """Seconds of the cheapest op call: an add of two 16-number tensors (best of 5 x 1,000)."""
    x, y = torch.randn(16), torch.randn(16)

    def thousand():
        for _ in range(1000):
            torch.add(x, y)

    return min(_timed(thousand) for _ in range(5)) / 1000


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default="hand,titans-lmm,titans-mac,hope-attention,hope")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", default=",".join(f"{k}={v}" for k, v in SIZE.items()))
    ap.add_argument("--reps", type=int, default=5, help="timed calls per distinct product (best)")
    ap.add_argument("--steps", type=int, default=2, help="steps of each spec timed (best; the "
                    "hand-written model takes 2 more)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    SIZE.clear()
    SIZE.update({k: int(v) for k, v in (kv.split("=") for kv in args.size.split(","))})
    args.device = "cpu"
    names = [HAND, *[n for n in args.specs.split(",") if n != HAND]]
    T, tokens = args.seq_len, args.batch * args.seq_len
    load = os.getloadavg()[0]

    rate, per_op = write_rate(), op_cost()
    hand = make_step(HAND, args, T)
    hand()
    hand_step = min(hand() for _ in range(args.steps + 2))
    rows = []
    for name in names:
        step = hand if name == HAND else make_step(name, args, T)
        step()  # warm: lazy buffers and the optimizer's state
        own = hand_step if name == HAND else min(step() for _ in range(args.steps))
        recorder, flops, written = recorded_step(step)
        ops = count_ops(step)  # the profiler's events, apart from the modes above
        seconds, calls = products_time(recorder, args.reps), sum(recorder.calls.values())
        rows.append({"name": name, "mflop": flops / tokens / 1e6, "calls": calls,
                     "products": seconds, "gflops": flops / seconds / 1e9,
                     "bound": hand_step / seconds, "kb": written / tokens / 1024,
                     "estimate": hand_step / (seconds + written / rate),
                     "ops": ops / tokens,
                     "estimate_ops": hand_step / (seconds + written / rate + ops * per_op),
                     "measured": hand_step / own})  # fmt: skip
        print(f"{name}: {rows[-1]['mflop']:.1f} MFLOP/token, products {seconds:.3f} s, "
              f"step {own:.3f} s", flush=True)  # fmt: skip

    sizes = ", ".join(f"{k} {v}" for k, v in SIZE.items())
    print(f"\nconfig: {sizes}; B={args.batch}, T={T}; {args.threads} thread(s); best of "
          f"{args.reps} per product; hand-written step {hand_step:.3f} s (best of "
          f"{args.steps + 2}); writes at {rate / 1e9:.1f} GB/s; the cheapest op "
          f"{per_op * 1e6:.1f} us; load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| spec | MFLOP/token | product calls | products alone, s | their GFLOP/s | KB written "
          "per token | op calls per token | x hand, measured | bound: products | estimate: products + "
          "writes | estimate: + op calls |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = "hand-written Transformer++" if r["name"] == HAND else f"`{r['name']}`"
        print(f"| {label} | {r['mflop']:,.1f} | {r['calls']:,} | {r['products']:.3f} | "
              f"{r['gflops']:.1f} | {r['kb']:,.0f} | {r['ops']:,.0f} | {r['measured']:.3f} | "
              f"{r['bound']:.3f} | {r['estimate']:.3f} | {r['estimate_ops']:.3f} |")


if __name__ == "__main__":
    main()
