"""Training-step speed and peak memory of every shipped spec beside a hand-written Transformer++.

Issue 13's table: each spec resized to d_model 256, 4 layers, 4 heads of 64 (d_ff 704 where the
spec has one), one training step = forward, next-token loss, backward and an AdamW step on a
batch of B x T random bytes; the median of ``--steps`` steps after ``--warmup`` steps. Every row
runs in a fresh subprocess (no allocator or cache state carried between rows), and the parent
records ``os.getloadavg()`` before and after the table, because on a shared machine absolute
times drift: read the ``x hand`` column (tokens/s over the hand-written Transformer++'s tokens/s
in the same run at the same T), not the absolute numbers.

Memory. CPU: ``peak RSS`` is the child's ``ru_maxrss`` (peak resident set) and ``delta`` is that peak minus the resident set just before the first step (model,
optimizer and the torch runtime excluded): the step's own cost. CUDA: ``torch.cuda``'s peak
allocated bytes over the steps, and the same minus what was allocated before the first step. glibc's default malloc raises its mmap threshold to the size
of every large block freed, after which blocks of up to 32 MiB come from the heap and stay
resident once freed: the rows therefore run with ``MALLOC_MMAP_THRESHOLD_=65536`` (fixed), so
the peak RSS follows what the step holds (``--mmap-threshold 0``: glibc's default; titans-lmm's
forward at T=512 peaked at 2.35 GB with the default and 0.81 GB with the fixed threshold,
holding the same tensors).
A child whose resident set passes ``--max-gb`` is killed and its row says so.

    python benchmarks/bench_models.py                                  # every spec, T 512 and 2048
    python benchmarks/bench_models.py --specs hand,transformer,hope --seq-lens 512 --steps 3
    python benchmarks/bench_models.py --device cuda
    python benchmarks/bench_models.py --specs hope,hope:NESTDSL_GROUP_MEMORIES=0 \
        --size d_model=64,n_heads=2,d_head=32,n_layers=2 --batch 2 --seq-lens 64,128 --ops --repeat 5

A spec written ``NAME:VAR=VALUE`` runs NAME with that environment variable in its child (the
ungrouped reference path above); ``NAME+compile`` runs NAME's model under ``torch.compile``
(the first warm-up step compiles; give ``--warmup`` 2 or more), e.g. ``--specs
hand,titans-lmm,titans-lmm+compile --interleave`` prices compilation in one process;
``NAME+spans`` trains it in recomputed spans (``nestdsl train --recompute spans``),
``NAME+spans128`` in spans of 128 tokens (``--recompute 128``), ``NAME+off`` with no
recomputation at all (``--recompute off``). ``--ops`` adds one profiled step per row and reports its op
calls per token (torch.profiler events, nested ones included) and the KB its ops write per token
(the bytes of every op output that is not a view of an input: the memory traffic a step makes,
which on a CPU costs as much as its arithmetic) and the MFLOP of its matrix products per token,
with the ``x hand`` that FLOP count allows at the Transformer's FLOP rate (the hand-written
row's MFLOP over the spec's): counts the machine's load does not change. ``--repeat N`` runs the whole table N times, each spec's ratio taken against the
hand-written row of the same repetition, and prints medians.

Threads: 1 by default (``--threads``), so other processes on a shared 2-core machine disturb
the ratios less (an OpenMP team stalls at every barrier while another process holds a core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HAND = "hand"  # the hand-written Transformer++ row
# Spec-name suffixes: `+compile` runs the model under torch.compile, `+spans` trains it in
# recomputed spans (`nestdsl train --recompute spans`), `+spans128` in spans of 128 tokens
# (`--recompute 128`), `+off` with no recomputation (`--recompute off`); they combine, e.g.
# `titans-lmm+compile+off`.
MODES = ("compile", "spans", "off")


def split_modes(name: str) -> tuple[str, set[str]]:
    """`NAME[:VAR=VALUE][+mode...]` -> (NAME[:VAR=VALUE], {mode, ...})."""
    base, *modes = name.split("+")
    unknown = {m for m in modes if m not in MODES and not re.fullmatch(r"spans\d+", m)}
    if unknown:
        raise SystemExit(f"unknown spec suffix +{', +'.join(sorted(unknown))} (known: +compile, +spans, +spansN, +off)")
    return base, set(modes)
SIZE = {"d_model": 256, "n_layers": 4, "n_heads": 4, "d_head": 64, "d_ff": 704}


def _rss_bytes() -> int:
    """The current resident set of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def build(name: str, device: str):
    """(model, returns_state) for a shipped spec resized to SIZE, or the hand-written one."""
    name = name.split(":")[0]  # NAME:VAR=VALUE: the variable is set by the parent
    if name == HAND:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_transformer import HandTransformer

        s = SIZE
        d_ff = s.get("d_ff", round(2.75 * s["d_model"]))  # 704 at d_model 256
        model = HandTransformer(256, s["d_model"], s["n_heads"], s["d_head"], d_ff,
                                s["n_layers"])  # fmt: skip
        return model.to(device), False
    import nestdsl

    spec = nestdsl.load(name).spec
    size = dict(SIZE)
    if any(m.feature_map for m in spec.memories.values()):
        # A feature map widens every head's keys as a power of its width (atlas: 8 -> 45
        # features, 64 -> 2,145): such a spec keeps its own head width at the same d_model.
        size["d_head"] = spec.dims["d_head"]
        size["n_heads"] = size["d_model"] // size["d_head"]
    sets = [f"dims.{k}={v}" for k, v in size.items() if k in spec.dims]  # only declared sizes
    return nestdsl.compile(nestdsl.load(name, sets)).to(device), True


def build_here(name: str, device: str):
    """`build`, with a NAME:VAR=VALUE variable set while the spec is loaded and compiled (the
    compiler's passes read it then)."""
    if ":" not in name:
        return build(name, device)
    var, value = name.split(":", 1)[1].split("=", 1)
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        return build(name, device)
    finally:
        if old is None:
            del os.environ[var]
        else:
            os.environ[var] = old


def make_step(name: str, args, T: int):
    """A training step of spec ``name`` at T tokens, returning its wall time."""
    torch.manual_seed(0)
    device = args.device
    base, modes = split_modes(name)
    model, stateful = build_here(base, device)
    for mode in modes:
        if mode.startswith("spans"):
            model.recompute = mode.removeprefix("spans") or "spans"
        elif mode == "off":
            model.recompute = "off"
    forward = torch.compile(model) if "compile" in modes else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 256, (args.batch, T + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> float:
        t0 = time.perf_counter()
        out = forward(x)
        logits = out[0] if stateful else out
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step.params = sum(p.numel() for p in model.parameters())
    return step


def child(args) -> None:
    """One row: build, warm up, time ``args.steps`` steps; print one JSON line."""
    torch.set_num_threads(args.threads)
    device = args.device
    step = make_step(args.child, args, args.seq)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_bytes()
    for _ in range(args.warmup):
        step()
    if args.profile:
        profile(step, args.profile)
        return
    times = [step() for _ in range(args.steps)]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes()
    t = statistics.median(times)
    row = {
        "spec": args.child,
        "T": args.seq,
        "s_per_step": t,
        "tok_s": args.batch * args.seq / t,
        "peak": peak,
        "delta": peak - base,
        "params": step.params,
    }
    if args.ops:
        row.update(op_counts(step, args.batch * args.seq))
    print(json.dumps(row))


def interleaved(args, names: list[str], T: int) -> list[dict]:
    """Every spec in this one process, their steps taken in turn (hand, spec, spec, hand, ...):
    each round's ratio compares steps taken seconds apart, so a load that drifts over minutes
    cancels; the medians over rounds are reported. No memory columns (one process)."""
    torch.set_num_threads(args.threads)
    steps = {name: make_step(name, args, T) for name in names}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(step())
    rows = []
    for name in names:
        t = statistics.median(times[name])
        ratios = [h / s for h, s in zip(times[HAND], times[name])]
        row = {"spec": name, "T": T, "s_per_step": t, "tok_s": args.batch * T / t,
               "ratio": statistics.median(ratios)}  # fmt: skip
        if args.ops:
            row.update(op_counts(steps[name], args.batch * T))
        rows.append(row)
    return rows


def op_counts(step, tokens: int) -> dict:
    """Op calls, KB written and MFLOP per token of one step each (`count_ops`, `count_written`,
    `count_flops`)."""
    return {"ops_per_token": count_ops(step) / tokens,
            "kb_per_token": count_written(step) / tokens / 1024,
            "mflop_per_token": count_flops(step) / tokens / 1e6}  # fmt: skip


def count_flops(step) -> int:
    """FLOPs of one step's matrix products (torch's FlopCounterMode: mm, bmm, their fused adds,
    convolutions and attention, forward and backward, attention counted without its causal
    mask as torch does; elementwise ops and triangular solves are not counted). Divided into
    the hand-written row's count it is the ``x hand`` a spec would reach if its products ran at
    the Transformer's FLOP rate."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    # torch counts the CUDA attention kernels only (the CPU's flash attention has the same
    # count) and not the in-place products (the deep memory's chunk ends)
    uncounted = {
        aten.addmm_: lambda _, a, b, *__, out_shape=None, **___: 2 * a[0] * a[1] * b[1],
        aten.baddbmm_: lambda _, a, b, *__, out_shape=None, **___: 2 * a[0] * a[1] * a[2] * b[2],
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(g, q, k, v),
    }  # fmt: skip
    with FlopCounterMode(display=False, custom_mapping=uncounted) as counter:
        step()
    return counter.get_total_flops()


def count_written(step) -> int:
    """Bytes written by one step's ops: every output tensor that is not a view of an input."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    def storages(tree) -> set[int]:
        return {t.untyped_storage().data_ptr() for t in tree_flatten(tree)[0]
                if isinstance(t, torch.Tensor)}  # fmt: skip

    class Written(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = storages((args, kwargs))
            Written.total += sum(t.nbytes for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)
                                 and t.untyped_storage().data_ptr() not in inputs)  # fmt: skip
            return out

    with Written():
        step()
    return Written.total


def count_ops(step) -> int:
    """Op calls of one step: torch.profiler events (nested ones included), forward and backward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(e.count for e in prof.key_averages())


def profile(step, rows: int) -> None:
    """One step under torch.profiler: the top ops by self time and by memory, and how much of
    the wall time no op accounts for (Python, dispatch and autograd bookkeeping)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        wall = step()
    events = prof.key_averages()
    # Self times of all ops sum to the time spent inside ops; the rest of the step is overhead.
    in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    calls = sum(e.count for e in events)
    print(
        f"step under the profiler: {wall:.2f} s wall, {in_ops:.2f} s inside ops "
        f"({in_ops / wall:.0%}), {calls:,} op calls ({wall / calls * 1e6:.1f} us per call)"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))
    print(events.table(sort_by="self_cpu_memory_usage", row_limit=rows, max_name_column_width=40))


def child_command(args, spec: str, T: int) -> tuple[list[str], dict]:
    cmd = [sys.executable, __file__, "--child", spec, "--seq", str(T), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
           str(args.threads), "--device", args.device, "--profile", str(args.profile),
           "--size", args.size] + (["--ops"] if args.ops else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if ":" in spec:  # NAME:VAR=VALUE (+compile)
        var, value = split_modes(spec)[0].split(":", 1)[1].split("=", 1)
        env[var] = value
    if args.mmap_threshold:  # glibc: blocks this large are mmap-ed and returned when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    return cmd, env


def run_child(args, spec: str, T: int) -> dict:
    """Run one row in a fresh interpreter, killing it past ``--max-gb`` resident or the timeout."""
    cmd, env = child_command(args, spec, T)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    limit, t0, why = args.max_gb * 2**30, time.time(), None
    while proc.poll() is None:
        time.sleep(0.2)
        try:
            with open(f"/proc/{proc.pid}/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
        if rss > limit:
            why = f"over {args.max_gb:g} GB"
        elif time.time() - t0 > args.timeout:
            why = f"over {args.timeout:g} s"
        if why:
            proc.kill()
            break
    out, err = proc.communicate()
    if why:
        return {"spec": spec, "T": T, "error": why}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return {"spec": spec, "T": T, "error": f"failed: {tail[:120]}"}
    return json.loads(lines[-1])


def table(rows: list[dict], seq_lens: list[int]) -> str:
    """Medians over repetitions; each ratio against the hand-written row of its repetition."""
    hand = {(r["T"], r.get("rep", 0)): r["tok_s"] for r in rows
            if r["spec"] == HAND and "tok_s" in r}  # fmt: skip
    ops = any("ops_per_token" in r for r in rows)
    flops = {r["T"]: r["mflop_per_token"] for r in rows if r["spec"] == HAND and "mflop_per_token" in r}
    width = 8 if ops else 4
    cols = (" tok/s T={} | x hand |" + (" ops/token | KB/token | MFLOP/token | x hand at its FLOP rate |"
            if ops else "") + " peak RSS | delta |")  # fmt: skip
    head = "| spec |" + "".join(cols.format(T) for T in seq_lens)
    lines = [head, "|---|" + ("---:|" * width) * len(seq_lens)]
    for spec in dict.fromkeys(r["spec"] for r in rows):
        cells = []
        for T in seq_lens:
            mine = [r for r in rows if r["spec"] == spec and r["T"] == T]
            good = [r for r in mine if "error" not in r]
            blank = " |" * width
            if not mine:
                cells.append(blank)
            elif not good:
                cells.append(f" {mine[0]['error']}" + blank[2:])
            else:
                med = statistics.median
                ratios = [r["ratio"] if "ratio" in r else r["tok_s"] / hand[T, r.get("rep", 0)]
                          for r in good if "ratio" in r or (T, r.get("rep", 0)) in hand]  # fmt: skip
                ratio = f"{med(ratios):.3f}" if ratios else ""
                count = ""
                if ops:
                    mflop = med(r["mflop_per_token"] for r in good)
                    bound = f"{flops[T] / mflop:.3f}" if T in flops else ""
                    count = (f" {med(r['ops_per_token'] for r in good):,.0f} |"
                             f" {med(r['kb_per_token'] for r in good):,.0f} | {mflop:,.1f} | {bound} |")
                memory = " | |" if "peak" not in good[0] else (
                    f" {med(r['peak'] for r in good) / 2**30:.2f} GB"
                    f" | {med(r['delta'] for r in good) / 2**30:.2f} GB |")  # fmt: skip
                cells.append(f" {med(r['tok_s'] for r in good):,.0f} | {ratio} |{count}{memory}")
        name = "hand-written Transformer++" if spec == HAND else f"`{spec}`"
        lines.append(f"| {name} |" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--specs",
        default="all",
        help="comma-separated names (`hand` is the "
        "hand-written Transformer++, always run first); default every shipped spec",
    )
    ap.add_argument("--seq-lens", default="512,2048")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--max-gb", type=float, default=8.0, help="kill a row past this resident set")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    ap.add_argument(
        "--mmap-threshold",
        type=int,
        default=65536,
        metavar="BYTES",
        help="glibc MALLOC_MMAP_THRESHOLD_ for the rows (0: glibc's default, whose "
        "threshold grows with freed blocks, so the heap keeps freed memory "
        "resident and the peak RSS overstates what the step holds)",
    )
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="profile one step of each spec instead of timing (prints ROWS rows)",
    )
    ap.add_argument("--size", default=",".join(f"{k}={v}" for k, v in SIZE.items()),
                    help="the sizes every spec is resized to, as KEY=VALUE,...")  # fmt: skip
    ap.add_argument("--ops", action="store_true", help="also count op calls, KB written and MFLOP per "
                    "token (profiled steps per row)")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=1, help="run the table N times; medians")
    ap.add_argument("--interleave", action="store_true", help="run every spec in one process, "
                    "their steps in turn; ratios per round (no memory columns)")  # fmt: skip
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    SIZE.clear()
    SIZE.update({k: int(v) for k, v in (kv.split("=") for kv in args.size.split(","))})
    if args.child:
        child(args)
        return
    from nestdsl.spec.shipped import shipped_names

    names = shipped_names() if args.specs == "all" else args.specs.split(",")
    names = [HAND, *[n for n in names if n != HAND]]
    seq_lens = [int(t) for t in args.seq_lens.split(",")]
    load_before = os.getloadavg()
    if args.profile:  # the profiles, one process each, straight to stdout
        for T in seq_lens:
            for name in names:
                print(f"\n## {name}, T={T} (load average {os.getloadavg()[0]:.2f})", flush=True)
                subprocess.run(child_command(args, name, T)[0], env=child_command(args, name, T)[1])
        return
    rows = []
    for rep in range(args.repeat if not args.interleave else 0):
        for T in seq_lens:
            for name in names:
                row = run_child(args, name, T)
                row["load"], row["rep"] = os.getloadavg()[0], rep
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    if args.interleave:
        for T in seq_lens:
            for row in interleaved(args, names, T):
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    load_after = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s)"
    )
    malloc = args.mmap_threshold or "glibc default"
    if not args.interleave:
        print(f"memory: peak RSS of the row's process, MALLOC_MMAP_THRESHOLD_={malloc}")
    sizes = ", ".join(f"{k} {v}" for k, v in SIZE.items())
    print(f"config: {sizes}; B={args.batch}; forward + loss + backward + AdamW; median of "
          f"{args.steps} steps after {args.warmup} warm-up; "
          f"{'one process, steps in turn' if args.interleave else 'one process per row'}; "
          f"{args.repeat} repetition(s), medians")  # fmt: skip
    print(f"load average (1/5/15 min): before {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}\n")  # fmt: skip
    print(table(rows, seq_lens))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
