"""Mixed precision: every shipped spec trains a step under bf16 autocast (CPU autocast here;
`--device cuda` uses the same path), with its memory updates kept in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl

from .helpers import load_small


@pytest.mark.parametrize("name", nestdsl.shipped_names())
def test_bf16_autocast_step(name):
    model = nestdsl.compile(load_small(name))
    tokens = torch.randint(0, 256, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(tokens)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # short convolutions carry bf16 activations; every memory state is float32
    memory_states = [v for k, v in state.items() if v.is_floating_point() and ".conv" not in k]
    assert all(v.dtype == torch.float32 for v in memory_states), name
