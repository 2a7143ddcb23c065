"""One training step of the public peers beside nestdsl's counterparts, in the same run (issue 13).

Issue 13's goals are ratios measured in one run: ``titans-mac`` at least 3x titans-pytorch's
Memory-as-Context Transformer, ``hope`` at least 10x nested-learning's self-modifying Hope.
Each peer runs in its own virtual environment (its own pinned dependencies) through a small
driver passed to that venv's python with ``-c``; nestdsl's rows (the hand-written Transformer++,
``titans-mac``, ``hope``) run through ``bench_models.py``'s row runner. Every row is a fresh
process with one torch thread, ``MALLOC_MMAP_THRESHOLD_`` fixed, timed the same way as
``bench_models.py`` (median of ``--steps`` steps after ``--warmup``; peak RSS = ``ru_maxrss``;
delta = peak minus the resident set before the first step), and each row records the 1-minute
load average when it started and ended.

The peers' venvs (default under ``--venvs /work/peers``; torch first, then the peer pinned):

    python3.11 -m venv /work/peers/titans && /work/peers/titans/bin/pip install torch==2.13.0 \\
        && /work/peers/titans/bin/pip install titans-pytorch==0.5.5
    python3.11 -m venv /work/peers/nl && /work/peers/nl/bin/pip install torch==2.13.0 \\
        && /work/peers/nl/bin/pip install nested-learning==0.2.0

    python benchmarks/bench_peers.py                         # the issue's size: B=4, T=512, d 256, 4 layers
    python benchmarks/bench_peers.py --seq-len 128 --d-model 128 --layers 2 --json peers.json

Peer settings (chosen to match the nestdsl specs; see ``PEERS``):

- titans-pytorch ``MemoryAsContextTransformer``: dim d_model, depth layers, heads 4 of
  d_model/4, segment 16 (attention window and memory chunk 16, as ``titans-mac``'s
  ``segment: every 16``), 4 persistent tokens (``n_persist``), no long-term memory tokens, a
  neural memory in every layer with 4 heads of d_model/4 and the package's default memory model
  (2-layer MLP, expansion 4, LayerNorm + residual; ``titans-mac``: depth 2, expansion 4,
  residual, layernorm), momentum on (``rule: momentum``); everything else the package default
  (GEGLU feed-forward x4 -> inner 2/3 x 4 x d, 4 hyper-connection residual streams).
  Training step: ``logits = model(x)``, cross-entropy on the next bytes, backward, AdamW.
- nested-learning ``HOPEModel`` with ``block_variant="hope_selfmod"`` (self-modifying Titans
  followed by a CMS, NL eqs. 94-97): dim d_model, layers, chunk 16 for the k/v/q/eta/alpha
  memories and 8 for the main memory (``hope``'s ``proj`` and ``memory`` levels), CMS levels
  every 16/32/64 tokens (``hope``'s ``cms_1..3``); everything else the package default.
  Training step: the package's default ``two_pass_stopgrad_updates`` step
  (``nested_learning.training.run_training_loop`` without online updates, without its gradient
  clipping): forward, cross-entropy, backward, AdamW, then the update pass under no_grad
  (``model(x, teach_signal=compute_teach_signal(model, logits, x))``), which performs the
  self-modifying memories' chunked writes and the CMS updates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_models  # noqa: E402  (a sibling script, not a package)

# The driver every peer row runs with ``<venv>/bin/python -c DRIVER CONFIG_JSON``: it builds the
# peer's model with BUILD[peer] (source text, defines build(cfg) -> (model, post_step)), times
# the step like bench_models.child and prints one JSON line.
DRIVER = r"""
import json, statistics, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["bench_dir"])
import torch
import torch.nn.functional as F
from bench_models import _peak_rss_bytes, _rss_bytes
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
exec(cfg["build"])
model, post_step = build(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
tokens = torch.randint(0, 256, (cfg["batch"], cfg["seq"] + 1))
x, y = tokens[:, :-1], tokens[:, 1:]

def step():
    t0 = time.perf_counter()
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if post_step is not None:
        post_step(x, logits.detach())
    return time.perf_counter() - t0

base = _rss_bytes()
for _ in range(cfg["warmup"]):
    step()
times = [step() for _ in range(cfg["steps"])]
peak = _peak_rss_bytes()
t = statistics.median(times)
print(json.dumps({"spec": cfg["name"], "T": cfg["seq"], "s_per_step": t, "times": times,
                  "tok_s": cfg["batch"] * cfg["seq"] / t, "peak": peak, "delta": peak - base,
                  "params": sum(p.numel() for p in model.parameters())}))
"""

BUILD_TITANS = r"""
def build(cfg):
    from titans_pytorch import MemoryAsContextTransformer
    d, heads = cfg["d_model"], cfg["heads"]
    model = MemoryAsContextTransformer(
        num_tokens=256, dim=d, depth=cfg["layers"], segment_len=16, heads=heads,
        dim_head=d // heads, num_persist_mem_tokens=4, num_longterm_mem_tokens=0,
        neural_memory_kwargs=dict(dim_head=d // heads, heads=heads, momentum=True),
    )
    # titans-pytorch 0.5.5 makes the per-head initial memory weights with einops.repeat, an
    # expanded view (stride 0) that AdamW's in-place weight decay rejects; give each head its
    # own copy (what per_head_learned_parameters means; the step's compute is unchanged).
    for p in model.parameters():
        if 0 in p.stride():
            p.data = p.data.contiguous()
    return model, None
"""

BUILD_NL = r"""
def build(cfg):
    from nested_learning.levels import LevelSpec
    from nested_learning.model import HOPEModel, ModelConfig
    from nested_learning.training import compute_teach_signal
    model = HOPEModel(ModelConfig(
        vocab_size=256, dim=cfg["d_model"], num_layers=cfg["layers"], heads=cfg["heads"],
        titan_level=LevelSpec(name="titan", update_period=16),
        cms_levels=[LevelSpec(name=f"cms_{i}", update_period=p)
                    for i, p in enumerate((16, 32, 64), 1)],
        block_variant="hope_selfmod", self_mod_chunk_size=16, self_mod_chunk_size_memory=8,
    ))

    def post_step(x, logits):  # the package's update pass (two_pass_stopgrad_updates)
        with torch.no_grad():
            model(x, teach_signal=compute_teach_signal(model, logits, x))

    return model, post_step
"""

# peer -> its venv folder under --venvs, the pinned package, its import name, the driver's
# build source, and the nestdsl spec it is compared with.
PEERS = {
    "titans-pytorch": {"venv": "titans", "pin": "titans-pytorch==0.5.5",
                       "module": "titans_pytorch", "build": BUILD_TITANS,
                       "counterpart": "titans-mac", "goal": 3.0},
    "nested-learning": {"venv": "nl", "pin": "nested-learning==0.2.0",
                        "module": "nested_learning", "build": BUILD_NL,
                        "counterpart": "hope", "goal": 10.0},
}  # fmt: skip


def size_of(args) -> dict:
    heads = args.heads
    if args.d_model % heads:
        sys.exit(f"--d-model {args.d_model} is not a multiple of --heads {heads}")
    # d_ff 704 at d_model 256 (bench_models.SIZE): 2.75 x d_model, as the table.
    return {"d_model": args.d_model, "n_layers": args.layers, "n_heads": heads,
            "d_head": args.d_model // heads, "d_ff": round(2.75 * args.d_model)}  # fmt: skip


def venv_python(args, peer: str) -> Path:
    return Path(args.venvs) / PEERS[peer]["venv"] / "bin" / "python"


def check_venvs(args, peers: list[str]) -> dict:
    """The versions each peer venv holds; exits with how to make any venv that is missing."""
    versions, missing = {}, []
    for peer in peers:
        info, py = PEERS[peer], venv_python(args, peer)
        probe = ("import importlib.metadata as m, json; "
                 f"print(json.dumps({{'torch': m.version('torch'), "
                 f"'{peer}': m.version('{peer}')}}))")  # fmt: skip
        out = None
        if py.exists():
            r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
            out = r.stdout.strip() if r.returncode == 0 else None
        if out is None:
            venv = py.parent.parent
            missing.append(
                f"  {peer}: no usable venv at {venv} (python with torch and {info['pin']}). "
                f"Make it with:\n    python3.11 -m venv {venv} && {venv}/bin/pip install "
                f"torch==2.13.0 && {venv}/bin/pip install {info['pin']}"
            )
        else:
            versions[peer] = json.loads(out)
    if missing:
        sys.exit("bench_peers: peer venv missing (or --venvs points elsewhere):\n"
                 + "\n".join(missing))  # fmt: skip
    return versions


def row_command(args, name: str, T: int) -> tuple[list[str], dict]:
    """bench_models.run_child's command for one row: a peer's driver in its venv, or
    bench_models.py's child at this run's size in this interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    if name in PEERS:
        cfg = {"bench_dir": str(BENCH), "name": name, "build": PEERS[name]["build"],
               "threads": args.threads, "batch": args.batch, "seq": T, "steps": args.steps,
               "warmup": args.warmup, "d_model": args.d_model, "layers": args.layers,
               "heads": args.heads}  # fmt: skip
        env.pop("PYTHONPATH", None)  # the peer sees its own venv only
        return [str(venv_python(args, name)), "-c", DRIVER, json.dumps(cfg)], env
    # nestdsl's rows: bench_models.py's own child (its command-line flags only, so that flags
    # it gains later keep their defaults), resized with its --size
    size = ",".join(f"{k}={v}" for k, v in size_of(args).items())
    cmd = [sys.executable, bench_models.__file__, "--child", name, "--seq", str(T), "--batch",
           str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", "cpu", "--size", size]  # fmt: skip
    return cmd, env


def table(rows: list[dict]) -> str:
    hand = next((r["tok_s"] for r in rows if r["spec"] == bench_models.HAND and "tok_s" in r), None)
    lines = ["| row | tok/s | s/step | x hand | peak RSS | delta | params | load start -> end |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        spec = r["spec"]
        name = ("hand-written Transformer++" if spec == bench_models.HAND
                else f"{spec} (peer)" if spec in PEERS else f"nestdsl `{spec}`")  # fmt: skip
        load = f"{r['load_start']:.2f} -> {r['load_end']:.2f}"
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | | {load} |")
            continue
        ratio = f"{r['tok_s'] / hand:.3f}" if hand else ""
        lines.append(f"| {name} | {r['tok_s']:,.1f} | {r['s_per_step']:.2f} | {ratio} | "
                     f"{r['peak'] / 2**30:.2f} GB | {r['delta'] / 2**30:.2f} GB | "
                     f"{r['params'] / 1e6:.2f} M | {load} |")  # fmt: skip
    return "\n".join(lines)


def ratios(rows: list[dict], peers: list[str]) -> list[str]:
    by = {r["spec"]: r for r in rows if "tok_s" in r}
    out = []
    for peer in peers:
        ours, goal = PEERS[peer]["counterpart"], PEERS[peer]["goal"]
        if peer in by and ours in by:
            x = by[ours]["tok_s"] / by[peer]["tok_s"]
            mem = by[ours]["peak"] / by[peer]["peak"]
            verdict = "meets" if x >= goal else "misses"
            out.append(f"- `{ours}` / {peer}: {x:.2f}x tokens/s ({verdict} the issue's "
                       f"{goal:g}x), {mem:.2f}x peak RSS")  # fmt: skip
        else:
            out.append(f"- `{ours}` / {peer}: no ratio (a row failed)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4, help="heads of d_model/heads")
    ap.add_argument("--steps", type=int, default=1, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per row")
    ap.add_argument("--max-gb", type=float, default=12.0, help="kill a row past this resident set")
    ap.add_argument(
        "--mmap-threshold",
        type=int,
        default=65536,
        metavar="BYTES",
        help="glibc MALLOC_MMAP_THRESHOLD_ for every row (0: glibc's default)",
    )
    ap.add_argument("--venvs", default=os.environ.get("NESTDSL_PEER_VENVS", "/work/peers"),
                    help="folder holding the peers' venvs titans/ and nl/ "
                    "(env NESTDSL_PEER_VENVS)")  # fmt: skip
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers to run")
    ap.add_argument("--json", help="also write the rows (and versions, config) to this file")
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        sys.exit(f"unknown peer(s) {unknown}; known: {', '.join(PEERS)}")
    size_of(args)
    versions = check_venvs(args, peers)
    import torch

    # every row goes through bench_models.run_child (resident-set and timeout kill, JSON line)
    bench_models.child_command = row_command
    names = [bench_models.HAND]
    for peer in peers:
        names += [peer, PEERS[peer]["counterpart"]]
    load_before = os.getloadavg()
    rows = []
    for name in names:
        start = os.getloadavg()[0]
        row = bench_models.run_child(args, name, args.seq_len)
        row.update(load_start=start, load_end=os.getloadavg()[0])
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    load_after = os.getloadavg()
    s = size_of(args)
    print(
        f"machine: {os.cpu_count()} cpus; nestdsl rows: torch {torch.__version__}; peers: "
        + ", ".join(f"{p} {v[p]} (torch {v['torch']})" for p, v in versions.items())
    )
    print(f"config: B={args.batch}, T={args.seq_len}, d_model {s['d_model']}, {s['n_layers']} "
          f"layers, {s['n_heads']} heads of {s['d_head']}, d_ff {s['d_ff']}; {args.threads} "
          f"thread(s); forward + loss + backward + AdamW; median of {args.steps} step(s) after "
          f"{args.warmup} warm-up; one process per row; MALLOC_MMAP_THRESHOLD_="
          f"{args.mmap_threshold or 'glibc default'}")  # fmt: skip
    print(f"load average (1/5/15 min): before {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}\n")  # fmt: skip
    print(table(rows))
    print()
    print("\n".join(ratios(rows, peers)))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"versions": versions, "args": vars(args), "size": s, "load_before": load_before,
             "load_after": load_after, "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
