"""Continuum memory system (NL §7.1, eq. 71): a task-loss memory's weights change exactly at
its chunk boundaries, by -lr times the gradient of the model loss summed over the chunk (every
position of the chunk, the last one's target being the next chunk's first token)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import nestdsl

SPEC = """
nestdsl: 1
name: tiny-cms
dims: {vocab: 256, d: 16}
levels:
  fast: {every: 4}
  slow: {every: 8}
  pretrain: {every: step, optimizer: {kind: adamw}}
memories:
  C1:
    structure: {kind: mlp, dim: d, expansion: 2}
    level: fast
    objective: task
    rule: {kind: gd, lr: 0.5}
    init: learned
    write: stop_gradient
  C2:
    structure: {kind: mlp, dim: d, expansion: 2}
    level: slow
    objective: task
    rule: {kind: gd, lr: 0.25}
    init: learned
    write: stop_gradient
embed: {vocab: vocab, dim: d}
blocks:
  - nodes:
      c1: {op: read, memory: C1, query: x, order: chunk_start}
      c2: {op: read, memory: C2, query: c1, order: chunk_start}
    out: c2
"""


def model_and_tokens():
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.check_text(SPEC, "tiny-cms.yaml")).double()
    tokens = torch.randint(0, 256, (1, 16))
    return model, tokens


def weights(state, name):
    """The memory's weights in the state, `[out, in]` (batch 1, one head)."""
    return [state[f"block0.0.{name}.W.{i}"][0, 0] for i in range(2)]


def window_grads(model, tokens, C1, C2):
    """Independent computation: the loss of one window as a function of the two memories'
    weights, differentiated with torch.func. `tokens` is the window and the next token (the
    target of its last position)."""
    memories = model.layers[0].memories

    def loss_fn(w1, w2):
        x = model.embed(tokens[:, :-1])
        y = memories["C2"].apply(w2, memories["C1"].apply(w1, x.unsqueeze(2)))[:, :, 0]
        logits = model.head(model.norm(y))
        return F.cross_entropy(logits[0], tokens[0, 1:], reduction="sum")

    return torch.func.grad(loss_fn, argnums=(0, 1))(C1, C2)


def test_weights_change_exactly_at_chunk_boundaries_by_the_summed_task_gradient():
    model, tokens = model_and_tokens()
    init1 = [p.detach()[0] for p in model.layers[0].memories["C1"].initial]  # [out, in]
    init2 = [p.detach()[0] for p in model.layers[0].memories["C2"].initial]
    with torch.no_grad():
        _, s3 = model(tokens[:, :3])  # inside the first chunk: nothing changes yet
        _, s4 = model(tokens[:, :4])  # the chunk is complete, its last target not yet seen
        _, s5 = model(tokens[:, :5])
        _, s9 = model(tokens[:, :9])
    for s in (s3, s4):
        for a, b in zip(weights(s, "C1"), init1):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    # Window 1 (tokens 0..3, targets 1..4): C1 (every 4) steps by its gradient once token 4 is
    # here; C2 (every 8) only accumulates.
    g1, g2 = window_grads(model, tokens[:, :5], init1, init2)
    expected1 = [w - 0.5 * g for w, g in zip(init1, g1)]
    for got, want in zip(weights(s5, "C1"), expected1):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(weights(s5, "C2"), init2):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # Window 2 (tokens 4..7) runs with the stepped C1; with token 8, C2 applies both windows' sum.
    h1, h2 = window_grads(model, tokens[:, 4:9], expected1, init2)
    expected1b = [w - 0.5 * g for w, g in zip(expected1, h1)]
    expected2 = [w - 0.25 * (a + b) for w, a, b in zip(init2, g2, h2)]
    for got, want in zip(weights(s9, "C1"), expected1b):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(weights(s9, "C2"), expected2):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cms_learns_at_inference_and_streams_exactly():
    model, tokens = model_and_tokens()
    with torch.no_grad():
        whole, state = model(tokens)
        a, s = model(tokens[:, :6])
        b, s = model(tokens[:, 6:7], s)
        c, s = model(tokens[:, 7:], s)
    torch.testing.assert_close(torch.cat([a, b, c], 1), whole, rtol=1e-10, atol=1e-12)
    for i in range(2):
        torch.testing.assert_close(s[f"block0.0.C1.W.{i}"], state[f"block0.0.C1.W.{i}"])
    # learning happened: the weights moved away from the learned initial state
    init = model.layers[0].memories["C1"].initial[0]
    assert (state["block0.0.C1.W.0"][0] - init[0]).abs().max() > 1e-6
