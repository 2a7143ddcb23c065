"""Shipped Hope's continuum memory (NL eq. 71) learns from its whole task-loss window.

Hope's layer runs in sequential segments (its self-modifying memories feed their own writes),
so a 16-token window is several `_span` calls. Every CMS update must still equal
`torch.autograd.grad` of the window's next-token loss (all its positions, the last one's target
being the next window's first token) with respect to the weights the window read, whatever the
ratio of segment to window, and feeding the sequence in pieces must change nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl

CMS = ("C_1", "C_2", "C_3")
LR = nestdsl.load("hope").spec.memories["C_1"].rule.lr  # the shipped CMS step size


def small_hope(memory_every: int, cms_every: int):
    """Shipped hope at a small width, in float64, with the given main-memory chunk (which is
    its layer's segment) and CMS periods cms_every, 2x and 4x."""
    overrides = ["dims.d_model=16", "dims.n_heads=2", "dims.d_head=8",
                 f"levels.memory.every={memory_every}", f"levels.cms_1.every={cms_every}",
                 f"levels.cms_2.every={2 * cms_every}", f"levels.cms_3.every={4 * cms_every}"]  # fmt: skip
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load("hope", overrides=overrides)).double()
    assert model.task_window == cms_every
    return model


def cms_modules(model):
    return [layer.memories[name] for layer in model.layers for name in CMS]


def stacked(state, memory, name):
    return [state[f"{memory.key}.{name}.{i}"] for i in range(len(memory.initial))]


def window_gradients(model, tokens, state=None, weights=None):
    """Independent of the CMS update code: autograd of one window's summed next-token loss.
    `tokens` holds the window and one more token (the last position's target); `weights`
    are the tensors to differentiate by (default: every CMS initial state)."""
    logits, _ = model(tokens[:, :-1], state)
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
    return torch.autograd.grad(loss, weights)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("memory_every,cms_every", [(4, 16), (8, 16), (16, 16), (8, 32)])
def test_first_window_update_is_the_autograd_gradient_of_its_loss(memory_every, cms_every):
    model = small_hope(memory_every, cms_every)
    W = cms_every
    tokens = torch.randint(0, 256, (1, W + 1))
    memories = cms_modules(model)
    params = [p for m in memories for p in m.initial]
    expected = window_gradients(model, tokens, weights=params)
    with torch.no_grad():
        _, state = model(tokens)  # the window's update needs its last target: W + 1 tokens
    got = []
    for m in memories:
        if m.plan.chunk == W:  # stepped: W_1 = W_0 - lr G
            got += [(p[None] - w) / LR for p, w in zip(m.initial, stacked(state, m, "W"))]
        else:  # slower levels only accumulate G until their boundary
            got += stacked(state, m, "G")
    for g, e in zip(got, expected):
        assert rel(g[0], e) < 1e-7


def test_second_window_update_holds_the_carried_state_fixed():
    model = small_hope(4, 16)
    W = 16
    tokens = torch.randint(0, 256, (1, 2 * W + 1))
    with torch.no_grad():
        _, after = model(tokens)  # two windows learned
        _, mid = model(tokens[:, : W + 1])  # one learned, the second pending from its start
    start = {k[len("replay."):]: v for k, v in mid.items() if k.startswith("replay.")}
    memories = cms_modules(model)
    leaves = {}
    for m in memories:
        for i in range(len(m.initial)):
            key = f"{m.key}.W.{i}"
            start[key] = leaves[key] = start[key].clone().requires_grad_()
    expected = window_gradients(model, tokens[:, W:], start, list(leaves.values()))
    expected = dict(zip(leaves, expected))
    for m in memories:
        for i in range(len(m.initial)):
            key, acc = f"{m.key}.W.{i}", f"{m.key}.G.{i}"
            before = mid.get(acc, torch.zeros_like(after[key]))  # the first window's G
            if (2 * W) % m.plan.chunk == 0:  # stepped at 2W by the sum of both windows
                got = (start[key].detach() - after[key]) / LR - before
            else:
                got = after[acc] - before
            assert rel(got, expected[key]) < 1e-7


@pytest.mark.parametrize("cuts", [(5, 16, 17), (16,), (1, 2, 31, 32), (20, 33)])
def test_streaming_equals_one_pass(cuts):
    model = small_hope(8, 16)
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        whole, state = model(tokens)
        outs, s, start = [], None, 0
        for end in (*cuts, tokens.shape[1]):
            out, s = model(tokens[:, start:end], s)
            outs.append(out)
            start = end
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-9, atol=1e-11)
    for key, value in state.items():
        if ".C_" in key:
            torch.testing.assert_close(s[key], value, rtol=1e-9, atol=1e-11)
