"""The counters the benchmark scripts report (benchmarks/bench_models.py, bench_bound.py):
hand-computed counts on small steps. Nothing here is timed."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_bound  # noqa: E402
import bench_models  # noqa: E402


def _step():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    out = torch.zeros(3, 4, 6)
    a @ b  # bmm: 2 x 3 x 4 x 5 x 6 = 720
    out.baddbmm_(a, b)  # in place: 720, which torch's counter leaves out
    q = torch.randn(1, 2, 8, 4)
    F.scaled_dot_product_attention(q, q, q, is_causal=True)  # the CPU's flash attention


def test_flop_count_includes_cpu_attention_and_in_place_products():
    # attention: q k^T and p v, each 2 x 1 x 2 x 8 x 8 x 4 = 1,024 (no causal discount)
    assert bench_models.count_flops(_step) == 720 + 720 + 2 * 1024


def test_products_are_recorded_by_shape_and_counted():
    recorder = bench_bound.Recorder()
    with recorder:
        _step()
        _step()
    assert sum(recorder.calls.values()) == 6  # bmm, baddbmm_, attention, twice each
    assert len(recorder.calls) == 3
    assert bench_bound.products_time(recorder, reps=1) > 0


def test_one_recorded_step_gives_the_products_flops_and_writes_of_separate_steps():
    torch.manual_seed(0)
    recorder, flops, written = bench_bound.recorded_step(_step)
    assert sum(recorder.calls.values()) == 3 and len(recorder.calls) == 3
    assert flops == bench_models.count_flops(_step)
    assert written == bench_models.count_written(_step) > 0
