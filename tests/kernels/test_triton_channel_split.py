"""The Triton matrix-memory kernels at value width 1: the layout per-channel gates run in
(compiler/modules/channels.py: `heads × value_dim` one-channel heads, keys repeated per
channel). Triton pads the value axis to a 16-wide block and masks it; these cases check that
the masked tiles compute the loop oracle's numbers, forward and backward (Triton
interpreter on the CPU, as the other Triton tests)."""

from __future__ import annotations

import pytest

from . import test_triton_delta_rule as delta
from . import test_triton_linear_attention as linear
from . import test_triton_titans_linear as titans
from .triton_interp import interpreter  # noqa: F401

pytestmark = pytest.mark.usefixtures("interpreter")

# B, T, H * V (6: 2 heads x 3 channels), K, V = 1, chunk
SPLIT = (1, 21, 6, 8, 1, 16)


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_delta_rules_at_value_width_one(gated):
    delta._run(*SPLIT, gated=gated, h0=True)


def test_linear_attention_at_value_width_one():
    linear.test_matches_oracle((*SPLIT, True))


def test_titans_linear_at_value_width_one():
    titans.test_matches_oracle((1, 21, 6, 8, 1, 8, True))
