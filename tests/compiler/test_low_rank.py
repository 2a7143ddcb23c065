"""`op: linear` with `rank: r`: `y = x W_down W_up` (Miras §5.4: channel-wise gates produced
through low-rank projections), its parameter count and how `show` prints it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nestdsl
from nestdsl.compiler import run_passes
from nestdsl.compiler.count import count_by_level
from nestdsl.compiler.modules.ops import Linear, Stream
from nestdsl.errors import SpecError
from nestdsl.spec.shipped import read_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "gated-deltanet-channels.yaml"
PER_HEAD = "g:    {op: linear, in: h, out: [n_heads], then: [mamba_decay]}"


def gated(g_node: str):
    text = read_spec("gated-deltanet")[0].decode().replace(PER_HEAD, g_node)
    return nestdsl.check_text(text, "gated.yaml")


def test_low_rank_linear_is_two_linears():
    torch.manual_seed(0)
    layer = Linear((12,), (3, 5), True, [], "t", rank=4).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    down, up = layer.down.weight, layer.proj.weight  # [4, 12], [15, 4]
    expected = (x @ down.T @ up.T + layer.proj.bias).reshape(2, 7, 3, 5)
    torch.testing.assert_close(layer(x, 1, Stream(0, {})), expected, rtol=0, atol=1e-12)


def test_parameter_count_is_r_times_in_plus_out():
    """Against the full projection [d_model, n_heads * d_head] of the same tensor: the rank-r
    node has r (d_in + out) weights (mamba_decay's A and dt_bias are the same in both)."""
    full = gated("g:    {op: linear, in: h, out: [n_heads, d_head], then: [mamba_decay]}")
    low = gated("g:    {op: linear, in: h, out: [n_heads, d_head], rank: 16, then: [mamba_decay]}")
    count = [count_by_level(run_passes(c))["pretrain"].parameters for c in (full, low)]
    d_in, out, layers = 128, 4 * 32, 2
    assert count[0] - count[1] == layers * (d_in * out - 16 * (d_in + out))


def test_show_prints_the_rank():
    plan = run_passes(nestdsl.load(str(EXAMPLE)))
    text = plan.describe()
    assert "g [4, 32] (rank 16)" in text and "log_decay=`g` per channel" in text
    model = nestdsl.compile(nestdsl.load(str(EXAMPLE)))
    assert "rank=16" in repr(model.layers[0].ops["g"])


def test_the_example_trains_a_step():
    """The shipped example: per-channel, low-rank decay; a forward and backward run."""
    model = nestdsl.compile(nestdsl.load(str(EXAMPLE)))
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    logits, _ = model(tokens)
    logits.float().logsumexp(-1).mean().backward()
    g = model.layers[0].ops["g"]
    assert g.down.weight.grad is not None and g.down.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rank,text", [(0, "sizes must be positive"), ("d_rank", "d_rank")])
def test_a_bad_rank_is_a_positioned_error(rank, text):
    node = f"g:    {{op: linear, in: h, out: [n_heads], rank: {rank}, then: [mamba_decay]}}"
    with pytest.raises(SpecError) as err:
        gated(node)
    (d,) = err.value.diagnostics
    assert text in d.message and d.pos.line == 41 and d.pos.col == 55
