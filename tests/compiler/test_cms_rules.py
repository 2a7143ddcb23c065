"""Every inner optimizer and retention of a continuum-memory block (NL eq. 71 with any rule),
against a hand-written loop oracle in float64.

The block `C` is followed by a fixed CMS block `F` (lr 0) every 4 tokens, so that a chunk of
8 spans two task-loss windows. The oracle runs the windows one by one: each window's task-loss
gradient (torch.func, at the visible weights the chunk reads) and layer-input products
`a_t a_t^T`, summed over the chunk, then the rule written out by hand. The compiled model must
end in the same state.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nestdsl
from nestdsl.errors import SpecError
from nestdsl.kernels.newton_schulz import newton_schulz

SPEC = """
nestdsl: 1
name: cms-rule
dims: {{vocab: 256, d: 6}}
levels:
  fast: {{every: {every}}}
  win: {{every: 4}}
  pretrain: {{every: step, optimizer: {{kind: adamw}}}}
memories:
  C:
    structure: {{kind: mlp, dim: d, expansion: 2}}
    level: fast
    objective: task
    rule: {rule}
    {retention}
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
      c: {{op: read, memory: C, query: x, order: chunk_start}}
      f: {{op: read, memory: F, query: c, order: chunk_start}}
    out: f
"""

# (id, rule, retention, every): the oracle reads its constants from the spec below.
CASES = {
    "gd-l2-forget": ("{kind: gd, lr: 0.5}", "{kind: l2, forget: 0.1}", 4),
    "gd-l2-log-decay": ("{kind: gd, lr: 0.5}", "{kind: l2, log_decay: -0.2}", 4),
    "gd-learned-lr": ("{kind: gd, lr: {kind: learned, init: 0.4}}", None, 4),
    "momentum": ("{kind: momentum, lr: 0.3, momentum: 0.8}", None, 4),
    "muon": ("{kind: muon, lr: 0.05, momentum: 0.7}", "{kind: l2, forget: 0.1}", 4),
    "muon-cubic": ("{kind: muon, lr: 0.05, momentum: 0.7, ns_steps: 3, ns_kind: cubic}",
                   None, 4),  # fmt: skip
    "dgd": ("{kind: dgd, lr: 0.02}", "{kind: l2, forget: 0.1}", 4),
    "dgd-proximal": ("{kind: dgd, lr: 0.5, step: proximal}", None, 4),
    "dgd-momentum": ("{kind: dgd, lr: 0.02, momentum: 0.6}", None, 4),
    "kl": ("{kind: gd, lr: 0.5}", "{kind: kl, forget: 0.05, scale: 2.0}", 4),
    "lq": ("{kind: gd, lr: 0.5}", "{kind: lq, q: 3.0, forget: 0.1}", 4),
    "l2-local": ("{kind: gd, lr: 0.5}", "{kind: l2, forget: 0.2, mode: local}", 1),
    # chunks of two windows: gradients and a a^T summed over both
    "dgd-8": ("{kind: dgd, lr: 0.01}", None, 8),
    "dgd-momentum-8": ("{kind: dgd, lr: 0.01, momentum: 0.6, step: proximal}", None, 8),
    "momentum-kl-8": ("{kind: momentum, lr: 0.3, momentum: 0.8}", "{kind: kl, forget: 0.05}", 8),
}


def build(rule: str, retention: str | None, every: int):
    text = SPEC.format(rule=rule, every=every,
                       retention=f"retention: {retention}" if retention else "")  # fmt: skip
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.check_text(text, "cms-rule.yaml")).double()
    with torch.no_grad():  # unit-scale inputs, so that dgd's a a^T term matters
        model.embed.weight.normal_()
    return model


def oracle(model, tokens, name: str):
    """The state after every complete chunk whose last target is in `tokens`, by hand."""
    rule, retention, every = CASES[name]
    spec = model.layers[0].memories["C"].plan.memory
    memory = model.layers[0].memories["C"]
    lr = spec.rule.lr if name != "gd-learned-lr" else memory.gates.learned["lr"].item()
    mom = getattr(spec.rule, "momentum", None) or 0.0
    ret = spec.retention
    r = 1.0
    if ret is not None:
        r = math.exp(ret.log_decay) if getattr(ret, "log_decay", None) else 1.0 - ret.forget

    def visible(X):
        if ret is None or ret.kind == "l2":
            return [r * x for x in X] if getattr(ret, "mode", "") == "local" else X
        if ret.kind == "kl":
            return [ret.scale * x.softmax(-1) for x in X]
        return [x / (x.abs().pow(ret.q).sum() + 1e-6).pow((ret.q - 2) / ret.q) for x in X]

    fixed = [p.detach()[None] for p in model.layers[0].memories["F"].initial]

    def loss_fn(V, window):
        x = model.embed(window[:, :-1]).unsqueeze(2)  # [1, C, 1, d]
        y = model.layers[0].memories["F"].apply(fixed, memory.apply(V, x))[:, :, 0]
        logits = model.head(model.norm(y))
        return F.cross_entropy(logits[0], window[0, 1:], reduction="sum")

    X = [p.detach().clone()[None] for p in memory.initial]  # [1, 1, out, in]
    S = [torch.zeros_like(x) for x in X]
    win = math.gcd(every, 4)
    G = A = None
    for start in range(0, tokens.shape[1] - win, win):
        window = tokens[:, start : start + win + 1]
        V = visible(X)
        g = torch.func.grad(loss_fn)(V, window)
        a1 = model.embed(window[:, :-1])[0]  # [win, d]: the first layer's input per token
        a2 = F.gelu(a1 @ V[0][0, 0].T)  # [win, h]: the second layer's input
        a = [a1.T @ a1, a2.T @ a2]
        G = g if G is None else [u + w for u, w in zip(G, g)]
        A = a if A is None else [u + w for u, w in zip(A, a)]
        if (start + win) % every:
            continue
        new_X, new_S = [], []
        for x, s, g, a in zip(X, S, G, A):
            base = r * x
            if rule.startswith("{kind: dgd"):
                d = (x if getattr(ret, "mode", "") != "local" else base) @ a + g
                if "proximal" in rule:
                    d = d @ torch.linalg.inv(torch.eye(a.shape[0], dtype=a.dtype) + lr * a)
                g = d
            if "muon" in rule:
                s = mom * s + g
                x = base - lr * newton_schulz(s, spec.rule.ns_steps, spec.rule.ns_kind)
            elif "momentum" in rule:
                s = mom * s - lr * g
                x = base + s
            else:
                x = base - lr * g
            new_X.append(x)
            new_S.append(s)
        X, S = new_X, new_S
        G = A = None
    return X, S


@pytest.mark.parametrize("name", list(CASES))
def test_cms_rule_matches_the_loop_oracle(name):
    rule, retention, every = CASES[name]
    model = build(rule, retention, every)
    tokens = torch.randint(0, 256, (1, 3 * every + 1))
    with torch.no_grad():
        _, state = model(tokens)
    X, S = oracle(model, tokens, name)
    key = model.layers[0].memories["C"].key
    moved = 0.0
    for i, (x, p) in enumerate(zip(X, model.layers[0].memories["C"].initial)):
        torch.testing.assert_close(state[f"{key}.W.{i}"], x, rtol=1e-9, atol=1e-12)
        moved = max(moved, float((x[0] - p).detach().abs().max()))
    assert moved > 1e-4  # the rule did something worth comparing
    if "momentum" in rule or "muon" in rule:
        for i, s in enumerate(S):
            torch.testing.assert_close(state[f"{key}.S.{i}"], s, rtol=1e-9, atol=1e-12)


def test_a_per_token_gate_on_a_cms_block_is_rejected_at_its_line():
    text = SPEC.format(rule="{kind: momentum, lr: 0.1, momentum: m}", retention="", every=4)
    gate = "      m: {op: linear, in: x, out: [1], then: [sigmoid]}\n"
    text = text.replace("      c: {op: read", gate + "      c: {op: read")
    with pytest.raises(SpecError) as err:
        nestdsl.compile(nestdsl.check_text(text, "cms-rule.yaml"))
    message = str(err.value)
    assert "cms-rule.yaml:" in message
    assert "`momentum` cannot be the per-token tensor `m`" in message
