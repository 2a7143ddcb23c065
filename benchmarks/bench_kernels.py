"""Benchmark of the matrix-memory kernels: chunk-parallel form against the per-token loop.

For ``linear_attention`` and ``gated_delta_rule`` (with decay), backends ``chunk`` and
``naive``, at B=1, H=4, K=V=64, float32, chunk size 64, T in {512, 2048, 8192}, it reports:

* ``fwd ms``: forward time under ``torch.no_grad()`` (inference), best of the repetitions
  (the ``gated_delta_rule`` chunk backend then runs its inference form, see its README.md);
* ``fwd+bwd ms``: forward with autograd plus ``o.backward(do)``, best of the repetitions;
* ``tok/s``: B * T / time, for each of the two;
* ``peak RSS MB``: growth of the process's peak resident set size (``ru_maxrss``) during one
  forward+backward, in a fresh subprocess per configuration after a small warm-up call.
  It is what the run really cost in CPU memory, allocator effects included;
* ``saved MB``: bytes of the distinct storages autograd keeps for backward (counted with
  ``torch.autograd.graph.saved_tensors_hooks``; the inputs are included when saved). This is
  the activation memory a training step holds between forward and backward;
* ``speedup``: naive time / chunk time at the same T.

Repetitions are time-budgeted (``--budget`` seconds per measurement, at least one, at most
20), so the slow loop at T = 8192 is timed with few repetitions; the minimum is reported
because contention from other processes only ever adds time. Torch runs with ``--threads``
intra-op threads (default 1): on a shared 2-core machine, a 2-thread OpenMP team stalls at
every barrier whenever another process holds a core, which inflated small-op timings 10-100x
in trial runs. ``--quick`` runs a tiny configuration (for CI / smoke tests). Usage::

    python benchmarks/bench_kernels.py [--quick] [--budget SECONDS] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from nestdsl.kernels.api import gated_delta_rule, linear_attention

OPS = ("linear_attention", "gated_delta_rule")
BACKENDS = ("chunk", "naive")


def make_inputs(op: str, B: int, T: int, H: int, K: int, V: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    args = [q, k, v]
    if op == "gated_delta_rule":
        args.append(torch.randn(B, T, H, generator=gen).sigmoid())  # beta
        args.append(F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0))  # g, mild decay
    do = torch.randn(B, T, H, V, generator=gen)
    return [a.requires_grad_(True) for a in args], do


def call(op: str, args, backend: str, chunk_size: int):
    fn = linear_attention if op == "linear_attention" else gated_delta_rule
    return fn(*args, backend=backend, chunk_size=chunk_size)[0]


def fwd_bwd(op, args, do, backend, chunk_size):
    for a in args:
        a.grad = None
    call(op, args, backend, chunk_size).backward(do)


def timed(fn, budget: float) -> tuple[float, int]:
    """Best wall time of ``fn()`` in seconds, repeating until ``budget`` s are spent."""
    times = []
    start = time.perf_counter()
    while not times or (time.perf_counter() - start < budget and len(times) < 20):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), len(times)


def saved_bytes(op, args, backend, chunk_size) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o = call(op, args, backend, chunk_size)
    del o
    return sum(storages.values())


def child(op, backend, T, B, H, K, V, C, budget: float, threads: int):
    """Measure one configuration; runs in its own process so that ru_maxrss is its own."""
    torch.set_num_threads(threads)
    warm_args, warm_do = make_inputs(op, B, min(T, 2 * C), H, K, V, seed=1)
    fwd_bwd(op, warm_args, warm_do, backend, C)  # library initialisation, thread pools
    args, do = make_inputs(op, B, T, H, K, V)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fwd_bwd(op, args, do, backend, C)  # also the warm-up of the timed runs
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = saved_bytes(op, args, backend, C)

    def fwd():
        with torch.no_grad():
            call(op, args, backend, C)

    t_fwd, n_fwd = timed(fwd, budget)
    t_fb, n_fb = timed(lambda: fwd_bwd(op, args, do, backend, C), budget)
    return {
        "op": op,
        "backend": backend,
        "T": T,
        "fwd_s": t_fwd,
        "fwd_reps": n_fwd,
        "fwdbwd_s": t_fb,
        "fwdbwd_reps": n_fb,
        "peak_rss_mb": (rss1 - rss0) / 1024,  # ru_maxrss is in KiB on Linux
        "saved_mb": saved / 2**20,
        "threads": torch.get_num_threads(),
    }


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def table(rows: list[dict], B: int) -> str:
    by_key = {(r["op"], r["backend"], r["T"]): r for r in rows}
    lines = [
        "| op | backend | T | fwd (ms) | fwd tok/s | fwd+bwd (ms) | fwd+bwd tok/s "
        "| peak RSS (MB) | saved (MB) | speedup fwd | speedup fwd+bwd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        naive = by_key.get((r["op"], "naive", r["T"]))
        if r["backend"] == "chunk" and naive is not None:
            sp_f = f"{naive['fwd_s'] / r['fwd_s']:.1f}x"
            sp_fb = f"{naive['fwdbwd_s'] / r['fwdbwd_s']:.1f}x"
        else:
            sp_f = sp_fb = "1.0x" if r["backend"] == "naive" else "-"
        lines.append(
            f"| {r['op']} | {r['backend']} | {r['T']} "
            f"| {r['fwd_s'] * 1e3:.1f} | {B * r['T'] / r['fwd_s']:,.0f} "
            f"| {r['fwdbwd_s'] * 1e3:.1f} | {B * r['T'] / r['fwdbwd_s']:,.0f} "
            f"| {r['peak_rss_mb']:.1f} | {r['saved_mb']:.1f} | {sp_f} | {sp_fb} |"
        )
    return "\n".join(lines)


def scaling(rows: list[dict], t_lo: int, t_hi: int) -> str:
    by_key = {(r["op"], r["backend"], r["T"]): r for r in rows}
    lines = [
        f"| op | backend | fwd t({t_hi})/t({t_lo}) | fwd+bwd t({t_hi})/t({t_lo}) |",
        "|---|---|---:|---:|",
    ]
    for op in OPS:
        for backend in BACKENDS:
            lo, hi = by_key.get((op, backend, t_lo)), by_key.get((op, backend, t_hi))
            if lo and hi:
                lines.append(
                    f"| {op} | {backend} | {hi['fwd_s'] / lo['fwd_s']:.2f} "
                    f"| {hi['fwdbwd_s'] / lo['fwdbwd_s']:.2f} |"
                )
    ideal = t_hi / t_lo
    return "\n".join(lines) + f"\n\n(linear growth in T means a ratio of {ideal:g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny configuration")
    parser.add_argument("--budget", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--child", nargs=10, help=argparse.SUPPRESS)
    a = parser.parse_args()

    if a.child:
        op, backend, *sizes, budget = a.child
        T, B, H, K, V, C, threads = (int(x) for x in sizes)
        print(json.dumps(child(op, backend, T, B, H, K, V, C, float(budget), threads)))
        return

    if a.quick:
        B, H, K, V, C, Ts = 1, 2, 16, 16, 16, (64, 256)
        budget = 0.2 if a.budget is None else a.budget
    else:
        B, H, K, V, C, Ts = 1, 4, 64, 64, 64, (512, 2048, 8192)
        budget = 2.0 if a.budget is None else a.budget

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = []
    for op in OPS:
        for T in Ts:
            for backend in BACKENDS:
                cmd = [sys.executable, __file__, "--child", op, backend]
                cmd += [str(x) for x in (T, B, H, K, V, C, a.threads, budget)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"# {op:17s} {backend:5s} T={T:5d}: fwd {r['fwd_s'] * 1e3:9.1f} ms "
                    f"({r['fwd_reps']} reps), fwd+bwd {r['fwdbwd_s'] * 1e3:9.1f} ms "
                    f"({r['fwdbwd_reps']} reps)",
                    file=sys.stderr,
                    flush=True,
                )

    print(
        f"Machine: {cpu_name()}, torch {torch.__version__}, "
        f"{os.cpu_count()} cores, {rows[0]['threads']} torch thread(s), "
        f"Python {platform.python_version()}"
    )
    print(
        f"Config: B={B}, H={H}, K={K}, V={V}, float32, chunk_size={C}, "
        f"timing budget {budget:g} s per measurement (best of the repetitions)\n"
    )
    print(table(rows, B))
    print()
    print(scaling(rows, Ts[-2], Ts[-1]))
    print(
        f"\nTotal benchmark wall time: {time.perf_counter() - started:.0f} s; 1-min load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (the benchmark itself adds ~1-2)"
    )


if __name__ == "__main__":
    main()
