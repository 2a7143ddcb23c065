"""Titans' deep memories stay stable however large their meta-learned initial weights grow.

The curvature of `1/2 ||M(k) - v||^2` for `M(x) = x + W_1 gelu(W_2 x)` grows with the square of
the weights, so a fixed inner step (`theta <= 0.02`) that is stable at initialization overshoots
once the outer loop has grown `M_0` enough, and the in-context state explodes within one
sequence (nestdsl issue 10: titans-lmm's loss turned NaN at lr 2e-3). The shipped Titans memories
normalize their output (`norm: layernorm`, TTT's `x + LN(MLP(x))`), which makes the inner step
scale-free: larger weights give a proportionally smaller update. So does Hope's main memory.
Shrinking weights are the other direction (below): decay toward zero behind the norm drives
the inner step up; decay toward the initial state, or a high floor (`norm_eps`), prevents it.
"""

from __future__ import annotations

import pytest
import torch

import nestdsl
from nestdsl.eval.mqar import MQARShape, mqar_rows

SMALL = ["dims.d_model=32", "dims.n_heads=2", "dims.d_head=16", "dims.n_layers=1"]


def state_peak(spec: str, scale: float, extra: list[str] = (), memory: str = "M") -> float:
    """The largest |entry| of the states of the memories named `memory...` (`M`: exactly M;
    `M_`: every M_x) after one MQAR batch, with their initial states scaled."""
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load(spec, overrides=[*SMALL, *extra]))
    tag = memory if memory.endswith("_") else memory + "."
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".memories.{tag}" in name and ".initial." in name:
                p.mul_(scale)
        tokens, _ = mqar_rows(MQARShape(64, 8, 256), 4, seed=0)
        _, state = model(tokens)
    memory = [v for k, v in state.items() if f".{tag}" in k]
    assert memory, "no memory state returned"
    peaks = [v.abs().max().item() for v in memory]
    return float("inf") if any(p != p for p in peaks) else max(peaks)


@pytest.mark.parametrize("spec", ["titans-lmm", "titans-mag"])
def test_shipped_titans_memory_is_stable_at_large_weights(spec):
    peak = state_peak(spec, 16.0)
    assert peak < 2 * 16 * state_peak(spec, 1.0)  # grows with the weights, no faster


def test_without_the_inner_norm_the_memory_explodes():
    # The same spec with the norm taken out: the failure the norm prevents.
    without = ["memories.M.structure.norm=none", "memories.M.structure.norm_eps=null"]
    assert state_peak("titans-lmm", 16.0, without) > 1e6


# Hope's main memory as shipped before it had the inner norm.
HOPE_WITHOUT_NORM = ["memories.M_memory.structure.norm=none",
                     "memories.M_memory.structure.norm_eps=null"]  # fmt: skip


def test_hope_main_memory_is_stable_at_large_weights():
    peak = state_peak("hope", 16.0, memory="M_memory")
    assert peak < 2 * 16 * state_peak("hope", 1.0, memory="M_memory")


def test_hope_main_memory_without_the_inner_norm_overflows_at_large_weights():
    assert state_peak("hope", 16.0, HOPE_WITHOUT_NORM, memory="M_memory") > 1e6


# Shrinking weights. A layer norm makes the memory's last matrix scale-invariant, so retention
# toward zero shrinks the weights without forgetting anything and the effective inner step
# grows as 1 / ||W||^2: with LayerNorm's usual floor of 1e-5 the in-context dynamics turn
# chaotic past a few hundred tokens and the outer gradient explodes (titans-mac at T = 512:
# 7e16; titans-lmm at d_model 256: NaN at T = 2048). Two cures, each shipped: decay toward the
# initial state (the Titans specs), or a floor that caps the norm's gain at 1 / sqrt(eps)
# (`norm_eps`, default 0.1: yaad; hope's main memory at 0.01).
NORMED = ["titans-lmm", "titans-mac", "titans-mag", "titans-mal", "hope", "yaad"]


def outer_gradient_norm(spec: str, T: int, extra: list[str] = ()) -> float:
    """The norm of the next-token loss's gradient by every parameter, at initialization, on
    one random byte sequence of T tokens, the spec at its shipped size."""
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load(spec, overrides=list(extra)))
    tokens = torch.randint(0, 256, (1, T + 1))
    logits, _ = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits[0], tokens[0, 1:]).backward()
    grads = [p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).sum().sqrt().item()


@pytest.mark.slow
@pytest.mark.parametrize("spec", NORMED)
def test_outer_gradient_stays_bounded_over_long_sequences(spec):
    assert outer_gradient_norm(spec, 512) < 100


def test_decay_toward_zero_at_layernorms_usual_floor_explodes():
    # The shipped Titans memories use the floor 1e-5 with decay toward M_0; toward zero, the
    # same memory's outer gradient explodes (titans-mac at T = 512: 7e16).
    assert outer_gradient_norm("titans-mac", 512, ["memories.M.retention.toward=zero"]) > 1e4


def test_decay_toward_the_initial_state_keeps_the_usual_floor_stable():
    # `toward: init` keeps the weights at their scale: the same memory stays bounded.
    assert outer_gradient_norm("titans-mac", 512) < 100
