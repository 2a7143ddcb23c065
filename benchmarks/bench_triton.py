"""Benchmark of the Triton kernels on a GPU, against the torch chunk forms and fla's kernels.

For ``gated_delta_rule``, ``delta_rule``, ``linear_attention``, ``titans_linear`` and
``deep_memory`` at T in {2048, 8192, 32768} it times, per implementation,

* ``fwd``: the forward under ``torch.no_grad()``;
* ``fwd+bwd``: the forward with autograd plus ``backward`` of a random upstream gradient;

with ``triton.testing.do_bench`` (median), for our Triton backend (``triton``), the torch chunk
form on the same GPU (``chunk``) and, where ``fla`` (flash-linear-attention) is installed,
``chunk_gated_delta_rule`` / ``chunk_delta_rule`` / ``chunk_linear_attn`` (``fla``; Titans has
no public kernel). Batch x heads fills the chip: ``B = ceil(2 * SMs / H)`` unless ``--batch``.
``deep_memory`` is a Titans-sized LMM: a 2-layer residual gelu MLP memory ``d -> e*d -> d`` per
head (``d = --deep-dim`` 64, ``e = --deep-expansion`` 4), l2 objective, ``--deep-rule``
(momentum, Titans; ``dgd --deep-proximal`` at ``--deep-dim 32 --deep-expansion 2`` is Hope's
memory), chunks of ``--deep-chunk`` (16). The forward is the fused kernel (triton.py); the
backward is fused (triton_backward.py) up to a 64 x 128 weight tile and the chunk form's above
it, so at the default Titans size it is the chunk form's (README §8).

Columns: ``ms``; ``Mtok/s`` = B * T / time; ``GB/s`` = the compulsory bytes (every input,
output, upstream gradient and input gradient once, plus our saved chunk states written and read
back) / time, and its % of the device's HBM peak; ``TFLOP/s`` = the algorithm FLOPs of the
chunk form (``flops()`` below: the matmuls of one chunk step, per token) / time, and its % of
the device's FP32 (non-tensor-core) peak. Our kernels compute in float32; ``tl.dot`` takes
IEEE float32 products for float32 inputs and tf32 ones (tensor cores) for bfloat16 / float16
inputs (``--dot ieee|tf32`` forces one). The FLOP and byte models are the
same for every implementation, so the columns compare like with like.

Before timing, at the first T, the Triton form must launch its own kernel (a form that fell
back to the chunk form stops the run) and both forms' outputs are compared with the chunk form
in float64 (relative errors printed). In the interpreter the Triton and chunk forms can agree
bit for bit: ``tl.dot`` is numpy's float32 matmul there, the same products in the same order
as torch's for linear attention and the linear Titans memory, so "0" versus each other is not
a failed switch; the float64 column shows both errors. Usage, on a machine with a CUDA GPU::

    python benchmarks/bench_triton.py                      # full table, bfloat16, H=16, K=V=128
    python benchmarks/bench_triton.py --quick              # T=2048 only, small batch
    python benchmarks/bench_triton.py --ops deep_memory     # the deep memory rows only
    TRITON_INTERPRET=1 python benchmarks/bench_triton.py --smoke   # CPU: checks the script runs
    python benchmarks/bench_triton.py --compile-only --arch 90     # no GPU needed, see below

``--compile-only`` compiles every kernel (forward and backward, every feature switch on; the
deep memory's once per rule set the shipped specs use) for the CUDA architecture ``--arch``
with the ptxas that ships with Triton, and prints the compile time, shared memory and ptxas's
resource usage (registers, stack = spills) per kernel: it catches errors that the interpreter
forgives, and shared memory over a block's limit, on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
import torch.nn.functional as F

OPS = ("gated_delta_rule", "delta_rule", "linear_attention", "titans_linear", "deep_memory")

# Device peaks (dense, from the vendors' data sheets): FP32 CUDA-core FLOP/s, HBM bytes/s.
PEAKS = {
    "H200": (67e12, 4.8e12),
    "H100": (67e12, 3.35e12),
    "A100": (19.5e12, 2.0e12),
    "L40S": (91.6e12, 0.864e12),
    "A10": (31.2e12, 0.6e12),
}


def flops(op: str, C: int, K: int, V: int) -> tuple[float, float]:
    """(forward, backward) FLOPs per token and head of the chunk algorithm (matmuls only)."""
    if op == "linear_attention":
        return 2 * C * (K + V) + 4 * K * V, 6 * C * K + 4 * C * V + 8 * K * V
    if op == "titans_linear":
        return 2 * C * (K + V) + 10 * K * V, 6 * C * K + 4 * C * V + 26 * K * V
    if op == "deep_memory":  # K = d, V = h: write pass 6dh, two dual reads, two chunk ends
        # with momentum; the fused backward recomputes the forward and runs its adjoint (~2x)
        fwd = 4 * C * (K + V) + 22 * K * V
        return fwd, 3 * fwd
    # delta rule: A, P, the triangular inverse (C^3 per chunk), U, the reads and the update
    return 4 * C * (K + V) + 6 * K * V + 2 * C * C, 10 * C * (K + V) + 14 * K * V + 2 * C * C


def make_inputs(op, B, T, H, K, V, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q, v = rnd(B, T, H, K), rnd(B, T, H, K if op == "deep_memory" else V)
    k = F.normalize(rnd(B, T, H, K).float(), dim=-1).to(dtype)
    x = {"q": q, "k": k, "v": v}
    if op in ("gated_delta_rule", "delta_rule"):
        x["beta"] = rnd(B, T, H).float().sigmoid().to(dtype)
    if op == "gated_delta_rule":
        x["g"] = F.logsigmoid(rnd(B, T, H).float() + 3.0).to(dtype)
    if op in ("titans_linear", "deep_memory"):
        x["theta"] = 0.1 * rnd(B, T, H).float().sigmoid().to(dtype)
        x["eta"] = rnd(B, T, H).float().sigmoid().to(dtype)
        x["alpha"] = 0.01 * rnd(B, T, H).float().sigmoid().to(dtype)
    if op == "deep_memory":  # per-head initial weights of the MLP d -> V -> d (V = hidden)
        x["W1"] = rnd(H, V, K) * K**-0.5
        x["W2"] = rnd(H, K, V) * V**-0.5
    return x


DEEP = {"expansion": 4, "rule": "momentum", "step": "explicit"}  # set from the flags by run()


def deep_options(d: int, chunk: int):
    """The benchmarked deep memory (a Titans LMM by default, see the module docstring)."""
    from nestdsl.kernels.deep_memory import DeepMemoryOptions, MemoryStructure

    st = MemoryStructure(d, d, expansion=DEEP["expansion"])
    return DeepMemoryOptions(st, rule=DEEP["rule"], dgd_step=DEEP["step"], chunk_size=chunk)


def implementations(op: str, chunk: int) -> dict:
    """name -> fn(inputs dict) -> output tensor, for every implementation available here."""
    from nestdsl.kernels import api
    from nestdsl.kernels.titans_linear import titans_linear

    def ours(backend):
        if op == "deep_memory":
            from nestdsl.kernels.deep_memory import deep_memory, initial_weights

            def run(x):
                gates = x["theta"], x["eta"], x["alpha"]
                W = initial_weights([x["W1"], x["W2"]], x["q"].shape[0])
                options = deep_options(x["q"].shape[-1], chunk)
                return deep_memory(x["q"], x["k"], x["v"], *gates, W, options,
                                   backend=backend)[0]  # fmt: skip

            return run
        if op == "titans_linear":
            def run(x):
                gates = x["theta"], x["eta"], x["alpha"]
                return titans_linear(x["q"], x["k"], x["v"], *gates, chunk_size=chunk,
                                     backend=backend)[0]  # fmt: skip

            return run
        if op == "linear_attention":
            return lambda x: api.linear_attention(x["q"], x["k"], x["v"], chunk_size=chunk,
                                                  backend=backend)[0]  # fmt: skip
        return lambda x: api.gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], x.get("g"),
                                              chunk_size=chunk, backend=backend)[0]  # fmt: skip

    impls = {"triton": ours("triton"), "chunk": ours("chunk")}
    try:  # flash-linear-attention, where it covers the op
        if op == "gated_delta_rule":
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule

            impls["fla"] = lambda x: chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"],
                                                            x["beta"])[0]  # fmt: skip
        elif op == "delta_rule":
            from fla.ops.delta_rule import chunk_delta_rule

            impls["fla"] = lambda x: chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"])[0]
        elif op == "linear_attention":
            from fla.ops.linear_attn import chunk_linear_attn

            impls["fla"] = lambda x: chunk_linear_attn(x["q"], x["k"], x["v"])[0]
    except ImportError:
        pass
    return impls


def bench(fn, cuda: bool, reps: int = 3) -> float:
    """Median milliseconds of fn()."""
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    times = []
    for _ in range(reps):  # the interpreter smoke run: wall clock, meaningless as performance
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def compulsory_bytes(x: dict, o_bytes: int, states: int, backward: bool) -> int:
    inputs = sum(t.numel() * t.element_size() for t in x.values())
    if not backward:
        return inputs + o_bytes
    return 2 * inputs + 2 * o_bytes + inputs + 2 * states  # + do, grads, states written/read


def checked(op: str, impls: dict, x: dict) -> str:
    """Run both forms once: the Triton form must launch its kernel (no silent fallback); the
    relative errors of both against the chunk form in float64, and of one against the other."""
    import nestdsl.kernels.triton_support as ts

    launched, check = [], ts.check_launch
    ts.check_launch = lambda name, *a: (launched.append(name), check(name, *a))[1]
    try:
        with torch.no_grad():
            got = impls["triton"](x).float()
    finally:
        ts.check_launch = check
    if not launched:
        raise SystemExit(f"{op}: the triton backend did not launch a Triton kernel")
    with torch.no_grad():
        ref = impls["chunk"](x).float()
        x64 = {n: t.double() for n, t in x.items()}
        exact = impls["chunk"](x64)

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    return (f"launched {sorted(set(launched))}; vs chunk float64: triton {rel(got, exact):.2e}, "
            f"chunk {rel(ref, exact):.2e}; triton vs chunk {rel(got, ref):.2e}")  # fmt: skip


def run(args) -> None:
    import nestdsl.kernels.triton_support as ts

    ts.DOT_PRECISION = None if args.dot == "auto" else args.dot
    DEEP.update(expansion=args.deep_expansion, rule=args.deep_rule,
                step="proximal" if args.deep_proximal else "explicit")  # fmt: skip
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if not cuda:
        dtype = torch.float32  # the interpreter computes float32 only
    H, K, V, C = args.heads, args.head_dim, args.head_dim, args.chunk
    if cuda:
        props = torch.cuda.get_device_properties(0)
        sms, name = props.multi_processor_count, props.name
        peak = next((p for key, p in PEAKS.items() if key in name), None)
    else:
        sms, name, peak = 1, "CPU (Triton interpreter)", None
    B = args.batch or max(1, math.ceil(2 * sms / H))
    print(f"# {name}, {sms} SMs; B={B} H={H} K=V={K} chunk={C} {dtype} dot={args.dot}; "
          f"torch {torch.__version__}")  # fmt: skip
    if peak is None:
        print("# device peaks unknown: the % columns are empty")
    print("| op | T | pass | impl | ms | Mtok/s | GB/s | % HBM | TFLOP/s | % FP32 |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for op in args.ops:
        deep = op == "deep_memory"
        C = args.deep_chunk if deep else args.chunk
        K = V = args.deep_dim if deep else args.head_dim
        V = K * args.deep_expansion if deep else V  # the deep memory's hidden width
        if deep:
            from nestdsl.kernels.deep_memory.triton import unsupported

            print(f"# deep_memory: d={K}, h={V}, chunk {C}, rule {DEEP['rule']} "
                  f"({DEEP['step']} step for dgd), residual gelu MLP, l2")  # fmt: skip
            why = unsupported(deep_options(K, C), dtype)
            if why is not None:
                print(f"# deep_memory: the Triton kernel does not cover it ({why}); skipped")
                continue
        impls = implementations(op, C)
        for i, T in enumerate(args.T):
            x = make_inputs(op, B, T, H, K, V, dtype, device)
            if i == 0:  # our kernel against the chunk form before any timing
                print(f"# {op} at T={T}: {checked(op, impls, x)}")
            o_bytes = B * T * H * (K if deep else V) * x["q"].element_size()
            # Chunk states the backward reads: Titans' state and momentum, the deep memory's
            # two weight matrices (and their momenta) at every chunk start.
            per = 2 if op == "titans_linear" else 1
            if deep:
                per = 4 if deep_options(K, C).has_momentum else 2
            n_states = per * B * H * math.ceil(T / C) * K * V * 4
            f_fwd, f_bwd = flops(op, C, K, V)
            for name_impl, fn in impls.items():
                for backward in (False, True):
                    xs = {n: t.detach().requires_grad_(backward) for n, t in x.items()}
                    do = torch.randn_like(xs["q"] if deep else xs["v"]) if backward else None

                    def step(fn=fn, xs=xs, do=do, backward=backward):
                        if not backward:
                            with torch.no_grad():
                                return fn(xs)
                        fn(xs).backward(do)

                    try:
                        ms = bench(step, cuda)
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"| {op} | {T} | {'fwd+bwd' if backward else 'fwd'} | "
                              f"{name_impl} | failed: {type(exc).__name__}: {exc} |")  # fmt: skip
                        continue
                    sec = ms / 1e3
                    nbytes = compulsory_bytes(x, o_bytes, n_states, backward)
                    fl = B * T * H * (f_fwd + (f_bwd if backward else 0))
                    gbs, tfs = nbytes / sec / 1e9, fl / sec / 1e12
                    pct_bw = f"{100 * nbytes / sec / peak[1]:.0f}" if peak else ""
                    pct_fl = f"{100 * fl / sec / peak[0]:.0f}" if peak else ""
                    print(f"| {op} | {T} | {'fwd+bwd' if backward else 'fwd'} | {name_impl} "
                          f"| {ms:.2f} | {B * T / sec / 1e6:.2f} | {gbs:.0f} | {pct_bw} "
                          f"| {tfs:.1f} | {pct_fl} |")  # fmt: skip
            del x
            if cuda:
                torch.cuda.empty_cache()


def compile_only(args) -> None:
    """Compile every kernel for ``args.arch`` without a GPU (see the module docstring)."""
    import os
    import pathlib
    import subprocess
    import tempfile

    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("--compile-only compiles for the GPU: unset TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import nestdsl.kernels.triton_support as ts
    from nestdsl.kernels.deep_memory import triton as deep_memory
    from nestdsl.kernels.delta_rule import triton as delta_rule
    from nestdsl.kernels.linear_attention import triton as linear_attention
    from nestdsl.kernels.titans_linear import triton as titans_linear

    K = args.head_dim
    switches = ("USE_G", "USE_H0", "SAVE_H", "STORE_HT", "USE_DHT", "USE_M0", "USE_S0",
                "STORE_FINAL", "USE_DMT", "USE_DST")  # fmt: skip
    scalars = {"T": "i32", "N": "i32", "C": "i32", "scale": "fp32"}
    io = {"q", "k", "v", "beta", "g", "o", "do", "dv", "gv"}  # in the input dtype; rest fp32
    elt = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[args.dtype]
    cuobjdump = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    print(f"# sm_{args.arch}, K=V={K}, chunk tile {args.chunk}, {args.dtype}, dot={args.dot}")
    wanted = {"gated_delta_rule": delta_rule, "delta_rule": delta_rule,
              "linear_attention": linear_attention, "titans_linear": titans_linear}  # fmt: skip
    modules = dict.fromkeys(wanted[op] for op in args.ops if op in wanted)  # --ops picks
    for module in modules:
        for kernel in (module._fwd_kernel, module._bwd_kernel):
            names = kernel.arg_names
            prec = {"auto": "ieee" if elt == "fp32" else "tf32"}.get(args.dot, args.dot)
            if module is titans_linear:
                # the largest chunk the Triton form takes at this K (beyond: the chunk form)
                chunk = min(args.chunk, titans_linear.TILE_BUDGET // ts.block(K))
                BC, BK, BV = titans_linear._tiles(K, K, chunk)
                tiles = {"BC": BC}
            else:
                BT, BK, BV = module._blocks(K, K, args.chunk)
                tiles = {"BT": BT}
            consts = {"H": 4, "K": K, "V": K, "BK": BK, "BV": BV, "PREC": prec, **tiles}
            consts.update({n: True for n in switches if n in names})
            sig = {n: scalars.get(n, f"*{elt}" if n in io else "*fp32") for n in names}
            sig.update({n: "constexpr" for n in consts})
            t0 = time.perf_counter()
            options = {"num_warps": ts.num_warps(BK, BV)}
            target = GPUTarget("cuda", args.arch, 32)
            source = ASTSource(kernel, sig, consts)
            compiled = triton.compile(source, target=target, options=options)
            usage = ""
            if cuobjdump.exists():
                cubin = pathlib.Path(tempfile.mkdtemp()) / "kernel.cubin"
                cubin.write_bytes(compiled.asm["cubin"])
                out = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)],
                                     capture_output=True, text=True).stdout  # fmt: skip
                usage = " ".join(line.strip() for line in out.splitlines() if "REG:" in line)
            print(f"{module.__name__.split('.')[-2]}.{kernel.fn.__name__} {tiles}, BV={BV}: "
                  f"{time.perf_counter() - t0:.1f} s, shared {compiled.metadata.shared} B, "
                  f"{usage}", flush=True)  # fmt: skip
    # The deep memory's fused forward and backward: every switch on, tiles as run.
    if "deep_memory" not in args.ops:
        return
    from nestdsl.kernels.deep_memory import triton_backward

    d, C = args.deep_dim, min(args.deep_chunk, deep_memory.MAX_CHUNK)
    h = args.deep_expansion * d
    BT, BD, BH = ts.block(C), ts.block(d), ts.block(h)
    prec = {"auto": "ieee" if elt == "fp32" else "tf32"}.get(args.dot, args.dot)
    common = {"H": 4, "D": d, "HD": h, "C": C, "BT": BT, "BD": BD, "BH": BH, "ACT": 0,
              "MOM": True, "READ": 1, "NORM": True, "EPS": 1e-5, "PREC": prec}  # fmt: skip
    # Hope's memories (dgd with the proximal step; decaying toward the initial state too), the
    # Titans LMM decaying toward zero, and shipped Titans' (decay toward the initial state).
    rules = {"dgd_momentum, proximal": {"DGD": True, "PROX": True, "ANCHOR": False},
             "dgd_momentum, proximal, anchored": {"DGD": True, "PROX": True, "ANCHOR": True},
             "momentum": {"DGD": False, "PROX": False, "ANCHOR": False},
             "momentum, anchored": {"DGD": False, "PROX": False, "ANCHOR": True}}  # fmt: skip
    seq = {"q", "k", "v", "theta", "eta", "alpha", "o", "do"}  # in the input dtype; rest fp32
    for (kernel, switches), (rule, rule_switches) in itertools.product(
            ((deep_memory._fwd_kernel, {"USE_S0": True, "SAVE": True}),
             (triton_backward._bwd_kernel, {"HAS_DO": True, "HAS_DW": True, "HAS_DS": True})),
            rules.items()):  # fmt: skip
        consts = {**common, **switches, **rule_switches}
        sig = {n: scalars.get(n, f"*{elt}" if n in seq else "*fp32") for n in kernel.arg_names}
        sig.update({n: "constexpr" for n in consts})
        t0 = time.perf_counter()
        compiled = triton.compile(ASTSource(kernel, sig, consts),
                                  target=GPUTarget("cuda", args.arch, 32),
                                  options={"num_warps": deep_memory.num_warps(BH, BD)})  # fmt: skip
        usage = ""
        if cuobjdump.exists():
            cubin = pathlib.Path(tempfile.mkdtemp()) / "kernel.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            out = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)],
                                 capture_output=True, text=True).stdout  # fmt: skip
            usage = " ".join(line.strip() for line in out.splitlines() if "REG:" in line)
        print(f"deep_memory.{kernel.fn.__name__} d={d} h={h} BT={BT} ({rule}, layer norm): "
              f"{time.perf_counter() - t0:.1f} s, shared {compiled.metadata.shared} B, {usage}",
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--T", nargs="+", type=int, default=[2048, 8192, 32768])
    parser.add_argument("--batch", type=int, default=0, help="default: fill the chip")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--deep-dim", type=int, default=64, help="deep_memory: d")
    parser.add_argument("--deep-expansion", type=int, default=4, help="deep_memory: h = e * d")
    parser.add_argument("--deep-chunk", type=int, default=16, help="deep_memory: chunk size")
    parser.add_argument("--deep-rule", default="momentum",
                        choices=("gd", "momentum", "dgd", "dgd_momentum"))  # fmt: skip
    parser.add_argument("--deep-proximal", action="store_true", help="dgd's proximal step (Hope)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--dot", default="auto", choices=("auto", "ieee", "tf32"),
                        help="tl.dot precision (auto: ieee for fp32 inputs, tf32 for bf16/fp16)")
    parser.add_argument("--quick", action="store_true", help="T=2048, batch 4")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (interpreter on CPU)")
    parser.add_argument("--compile-only", action="store_true", help="compile for --arch, no GPU")
    parser.add_argument("--arch", type=int, default=90, help="CUDA capability for --compile-only")
    args = parser.parse_args()
    if args.compile_only:
        compile_only(args)
        return
    if args.quick:
        args.T, args.batch = [2048], args.batch or 4
    if args.smoke:
        args.T, args.batch, args.heads, args.head_dim, args.chunk = [40], 1, 2, 16, 16
        args.deep_dim, args.deep_expansion, args.deep_chunk = 8, 2, 8
    run(args)


if __name__ == "__main__":
    main()
