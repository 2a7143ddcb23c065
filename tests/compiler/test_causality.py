"""Every shipped spec is causal: the logits at position t depend on tokens 0..t only.

Streaming equality (test_shipped_specs.py) shows it at the ends of pieces only; a leak inside a
chunk, a segment or a task-loss window (a chunk-end state read early, MAC's retrieved prefix
laid out before the whole segment, a CMS window's update applied to its own tokens) would pass
it. Here one token in the middle of a chunk changes, and nothing before it may move.
"""

from __future__ import annotations

import pytest
import torch

import nestdsl

from .helpers import load_small

T = 48
# Mid-chunk and mid-segment (16-token chunks and segments, 8-token Hope segments, CMS windows
# of 16 and 32 tokens), and the first token of a chunk.
CHANGED = [21, 37, 32]


@pytest.mark.parametrize("name", nestdsl.shipped_names())
def test_changing_a_token_moves_no_earlier_logit(name):
    torch.manual_seed(0)
    model = nestdsl.compile(load_small(name)).double()
    tokens = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        base, _ = model(tokens)
        for j in CHANGED:
            other = tokens.clone()
            other[:, j] = (other[:, j] + 1 + torch.arange(2) * 7) % 256
            changed, _ = model(other)
            scale = base.abs().max().item()
            before = (changed[:, :j] - base[:, :j]).abs().max().item() / scale
            at = (changed[:, j] - base[:, j]).abs().max().item() / scale
            assert before < 1e-12, f"{name}: token {j} moves an earlier logit by {before:.2e}"
            assert at > 1e-6, f"{name}: token {j} does not move its own logit ({at:.2e})"
