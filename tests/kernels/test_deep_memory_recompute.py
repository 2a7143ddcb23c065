"""Recomputation in the deep memory's chunk form (``DeepMemoryOptions.recompute``, issue 13):
the chunk loop under activation checkpointing computes the same outputs, final states and
gradients (first and second order) as the plain loop, for every option case of the main
kernel test, and keeps less for backward."""

from __future__ import annotations

import pytest
import torch

from nestdsl.kernels.deep_memory import DeepMemoryOptions, deep_memory, initial_weights

from .helpers import assert_close
from .test_deep_memory import BASE, CASES, LN, MOMENTUM_RULES, make_inputs, run

RTOL = 1e-12  # the same ops on the same values: equal up to summation order in backward


def _pair(structure, kw, T=13, C=4, group=3):
    """(plain, recomputed) results of ``run``: T = 13 in chunks of 4 is 4 chunks, groups of 3
    leave a short last group and a padded last chunk."""
    kw = dict(kw)
    C = kw.pop("chunk_size", C)
    prefix = kw.pop("prefix", 0)
    inputs = make_inputs(structure, 2, T, 2, seed=3, momentum=kw.get("rule") in MOMENTUM_RULES,
                         window=kw.get("window", 1), prefix=prefix)  # fmt: skip
    plain = run(inputs, torch.float64, structure, "chunk", chunk_size=C, **kw)
    again = run(inputs, torch.float64, structure, "chunk", chunk_size=C, recompute=group, **kw)
    return plain, again


# One case per code path of the chunk loop (rules, proximal step, retentions, reads, gated and
# deep structures, chunk 1, Muon, Omega windows with a prefix, Huber): the rest are
# combinations of these that test_deep_memory.py checks against the loop.
PATHS = ("base", "rule-momentum", "rule-dgd-momentum", "dgd-proximal", "dgd-momentum-kl-rtw-ln",
         "ret-lq", "read-start", "gated", "depth3-relu", "chunk1", "rule-muon",
         "omega6>C-momentum-prefix", "omega4-kl-rtw", "obj-huber-norm")  # fmt: skip


@pytest.mark.parametrize("structure,kw", [pytest.param(*CASES[n], id=n) for n in PATHS])
def test_recompute_matches_the_plain_chunk_loop(structure, kw):
    plain, again = _pair(structure, kw)
    assert plain.keys() == again.keys()
    for name, ref in plain.items():
        assert_close(f"recompute {name}", ref, again[name], RTOL)


@pytest.mark.parametrize("group", [1, 2, 5])
def test_recompute_with_memora_lag_token_and_group_sizes(group):
    kw = dict(rule="momentum", retention="kl", lag_token=True)
    plain, again = _pair(LN, kw, T=21, C=4, group=group)
    for name, ref in plain.items():
        assert_close(f"recompute lag {name}", ref, again[name], RTOL)


def _second_order(recompute: int) -> list[torch.Tensor]:
    """Gradient of ||d loss / d W0||^2 by every input: backward through the backward."""
    inputs = make_inputs(LN, 2, 17, 2, seed=5, momentum=True)
    leaves = {n: x.detach().requires_grad_() for n, x in inputs.items()}
    opts = DeepMemoryOptions(LN, rule="momentum", chunk_size=4, recompute=recompute)
    params = [leaves["W0"], leaves["W1"]]
    mom = [leaves["S0"], leaves["S1"]]
    o, _ = deep_memory(*(leaves[n] for n in ("q", "k", "v", "theta", "eta", "alpha")),
                       initial_weights(params, 2), opts, momentum=mom,
                       output_final_state=True, backend="chunk")  # fmt: skip
    (g,) = torch.autograd.grad(o.square().sum(), [leaves["W0"]], create_graph=True)
    return list(torch.autograd.grad(g.square().sum(), list(leaves.values()),
                                    materialize_grads=True))  # fmt: skip


def test_recompute_is_differentiable_twice():
    for ref, got in zip(_second_order(0), _second_order(2), strict=True):
        assert_close("recompute second order", ref, got, RTOL)


def _saved_bytes(recompute: int) -> int:
    """Bytes of the distinct storages autograd keeps for backward outside recomputed groups."""
    inputs = make_inputs(BASE, 2, 64, 2, seed=7, momentum=True)
    leaves = {n: x.detach().float().requires_grad_() for n, x in inputs.items()}
    opts = DeepMemoryOptions(BASE, rule="momentum", chunk_size=4, recompute=recompute)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        o, _ = deep_memory(*(leaves[n] for n in ("q", "k", "v", "theta", "eta", "alpha")),
                           initial_weights([leaves["W0"], leaves["W1"]], 2), opts,
                           momentum=[leaves["S0"], leaves["S1"]], backend="chunk")  # fmt: skip
    o.sum().backward()
    return sum(saved.values())


def test_recompute_keeps_less_for_backward():
    plain, grouped = _saved_bytes(0), _saved_bytes(4)  # 16 chunks: 4 groups of 4
    assert grouped < 0.5 * plain, (plain, grouped)


def test_recompute_is_off_without_autograd():
    """Under no_grad there is nothing to keep: the plain loop runs (same numbers)."""
    inputs = make_inputs(BASE, 1, 13, 2, seed=1)
    args = [inputs[n] for n in ("q", "k", "v", "theta", "eta", "alpha")]
    W = initial_weights([inputs["W0"], inputs["W1"]], 1)
    with torch.no_grad():
        a, _ = deep_memory(*args, W, DeepMemoryOptions(BASE, chunk_size=4), backend="chunk")
        b, _ = deep_memory(*args, W, DeepMemoryOptions(BASE, chunk_size=4, recompute=1),
                           backend="chunk")  # fmt: skip
    assert torch.equal(a, b)


def test_recompute_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="recompute must be an int >= 0"):
        DeepMemoryOptions(BASE, recompute=-1)
