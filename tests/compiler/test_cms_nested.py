"""Nested CMS (NL eq. 72): the initial state of a faster block is a memory of a slower
in-context level.

`C1` (every 4) has `init: {kind: learned, by: slow}` (slow: every 8). Its initial state P
starts each sequence at the outer-trained parameter, takes a step of C1's rule from the task
gradients summed over each chunk of `slow`, and C1 restarts from it at every `slow` boundary.
A fixed CMS block `F` (lr 0) every 2 tokens makes the task-loss windows 2 tokens long, so
every sum runs over several windows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nestdsl

SPEC = """
nestdsl: 1
name: nested-cms
dims: {{vocab: 256, d: 6}}
levels:
  win: {{every: 2}}
  fast: {{every: 4}}
  slow: {{every: 8}}
  pretrain: {{every: step, optimizer: {{kind: adamw}}}}
memories:
  C1:
    structure: {{kind: mlp, dim: d, expansion: 2}}
    level: fast
    objective: task
    rule: {rule}
    init: {{kind: learned, by: slow}}
    reset: {reset}
  C2:
    structure: {{kind: mlp, dim: d, expansion: 2}}
    level: slow
    objective: task
    rule: {{kind: gd, lr: 0.25}}
    init: learned
  F:
    structure: {{kind: mlp, dim: d, expansion: 2}}
    level: win
    objective: task
    rule: {{kind: gd, lr: 0.0}}
    init: learned
embed: {{vocab: vocab, dim: d}}
blocks:
  - nodes:
      c1: {{op: read, memory: C1, query: x, order: chunk_start}}
      c2: {{op: read, memory: C2, query: c1, order: chunk_start}}
      f: {{op: read, memory: F, query: c2, order: chunk_start}}
    out: f
"""


GD, DGD = "{kind: gd, lr: 0.5}", "{kind: dgd, lr: 0.05}"


def build(reset: str = "sequence", rule: str = GD):
    torch.manual_seed(0)
    text = SPEC.format(reset=reset, rule=rule)
    model = nestdsl.compile(nestdsl.check_text(text, "nested-cms.yaml")).double()
    with torch.no_grad():  # unit-scale inputs, so that dgd's a a^T term matters
        model.embed.weight.normal_()
    return model


def oracle(model, tokens, dgd: bool = False):
    """The nested CMS by hand: (C1's weights, C1's initial state P, C2's weights). With `dgd`
    C1's drive is `W A + G`, A the summed products of its layers' inputs (gd: G)."""
    memories = model.layers[0].memories
    C1, C2 = memories["C1"], memories["C2"]

    fixed = [p.detach()[None] for p in memories["F"].initial]

    def loss_fn(w1, w2, window):
        x = model.embed(window[:, :-1]).unsqueeze(2)  # [1, 2, 1, d]
        y = memories["F"].apply(fixed, C2.apply(w2, C1.apply(w1, x)))[:, :, 0]
        logits = model.head(model.norm(y))
        return F.cross_entropy(logits[0], window[0, 1:], reduction="sum")

    def inputs(w1, window):  # sum_t a_t a_t^T of C1's two layers
        a1 = model.embed(window[:, :-1])[0]  # [2, d]
        a2 = F.gelu(a1 @ w1[0][0, 0].T)  # [2, h]
        return [a1.T @ a1, a2.T @ a2] if dgd else [0.0, 0.0]

    def add(acc, x):
        return x if acc is None else [a + b for a, b in zip(acc, x)]

    P = [p.detach()[None] for p in C1.initial]
    W1, W2 = list(P), [p.detach()[None] for p in C2.initial]
    G1 = A1 = PG = PA = G2 = None
    for end in range(2, tokens.shape[1], 2):
        window = tokens[:, end - 2 : end + 1]
        g1, g2 = torch.func.grad(loss_fn, argnums=(0, 1))(W1, W2, window)
        A = inputs(W1, window)
        G1, A1, PG, PA, G2 = add(G1, g1), add(A1, A), add(PG, g1), add(PA, A), add(G2, g2)
        if end % 8 == 0:  # the slow boundary: P learns from the slow chunk; C1 restarts from it
            P = [p - 0.5 * g if not dgd else p - 0.05 * (p @ a + g)
                 for p, g, a in zip(P, PG, PA)]  # fmt: skip
            W1 = list(P)
            W2 = [w - 0.25 * g for w, g in zip(W2, G2)]
            G1 = A1 = PG = PA = G2 = None
        elif end % 4 == 0:
            W1 = [w - 0.5 * g if not dgd else w - 0.05 * (w @ a + g)
                  for w, g, a in zip(W1, G1, A1)]  # fmt: skip
            G1 = A1 = None
    return W1, P, W2


@pytest.mark.parametrize("reset,rule", [("sequence", GD), ("{kind: level, level: slow}", GD),
                                        ("sequence", DGD)])  # fmt: skip
def test_nested_cms_matches_the_loop_oracle(reset, rule):
    model = build(reset, rule)
    tokens = torch.randint(0, 256, (1, 21))  # windows end at 2 .. 20; 10 learned
    with torch.no_grad():
        _, state = model(tokens)
    W1, P, W2 = oracle(model, tokens, dgd=rule == DGD)
    key1, key2 = (model.layers[0].memories[n].key for n in ("C1", "C2"))
    for i in range(2):
        torch.testing.assert_close(state[f"{key1}.W.{i}"], W1[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(state[f"{key1}.P.{i}"], P[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(state[f"{key2}.W.{i}"], W2[i], rtol=1e-9, atol=1e-12)
    # C1 at token 20 is one fast step past P: the oracle is not trivially the restart point
    assert (W1[0] - P[0]).abs().max() > 1e-6


def test_nested_cms_streams_exactly():
    model = build()
    tokens = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        whole, state = model(tokens)
        a, s = model(tokens[:, :8])
        b, s = model(tokens[:, 8:13], s)
        c, s = model(tokens[:, 13:], s)
    torch.testing.assert_close(torch.cat([a, b, c], 1), whole, rtol=1e-10, atol=1e-12)
    for key, value in state.items():
        torch.testing.assert_close(s[key], value, rtol=1e-10, atol=1e-12)


def test_the_outermost_level_trains_the_start_of_the_nested_state():
    """The in-context state P is no parameter; the parameter is P's value at each sequence
    start, trained by the outer optimizer (the `step` level), not handed to `slow`."""
    model = build()
    levels = model.parameter_levels()
    for i in range(2):
        assert levels[f"layers.0.memories.C1.initial.{i}"] == "pretrain"
        assert levels[f"layers.0.memories.C2.initial.{i}"] == "pretrain"
    assert "slow" not in levels.values() and "fast" not in levels.values()
    tokens = torch.randint(0, 256, (1, 21))
    logits, _ = model(tokens)
    F.cross_entropy(logits[0, :-1], tokens[0, 1:]).backward()
    assert model.layers[0].memories["C1"].initial[0].grad.abs().max() > 0
