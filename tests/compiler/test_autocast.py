"""Mixed precision: every shipped spec trains a step under bf16 autocast (CPU autocast here;
`--device cuda` uses the same path), with its memory updates kept in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl

SMALL = ["dims.d_model=32", "dims.n_heads=2", "dims.d_head=16", "dims.n_layers=1"]


@pytest.mark.parametrize("name", nestdsl.shipped_names())
def test_bf16_autocast_step(name):
    dims = nestdsl.load(name).spec.dims
    model = nestdsl.compile(nestdsl.load(name, [o for o in SMALL if o[5:].split("=")[0] in dims]))
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
