"""Retention toward the initial weights (`anchored`): `W_t = A + r_t (W_{t-1} - A) + update`
(for dgd: `W_t = W_{t-1} (r_t I - lr_t a_t a_t^T) + (1 - r_t) A - lr_t G_t`).

The chunk form against the per-token loop in float64 (outputs, final states, every gradient,
the anchor's included), from a state that is not the anchor; with no writes the state decays
exactly toward the anchor; the anchored memory differs from the one decaying toward zero;
the options refuse what is not lowered.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestdsl.kernels.deep_memory import DeepMemoryOptions, MemoryStructure, deep_memory, init_params

from .helpers import assert_close

LN = MemoryStructure(4, 4, depth=2, expansion=2, activation="gelu", residual=True, norm="layernorm")
DEEP = MemoryStructure(4, 3, depth=3, expansion=2, activation="relu", residual=False)


def leaves(structure, B=2, T=13, H=2, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {"q": randn(B, T, H, structure.d_in), "k": F.normalize(randn(B, T, H, structure.d_in), dim=-1),
         "v": randn(B, T, H, structure.d_out), "theta": 0.5 * randn(B, T, H).sigmoid(),
         "eta": randn(B, T, H).sigmoid(), "alpha": 0.3 * randn(B, T, H).sigmoid()}  # fmt: skip
    anchor = init_params(structure, H, generator=gen, dtype=torch.float64)
    x.update({f"A{i}": a.expand(B, *a.shape).clone() for i, a in enumerate(anchor)})
    # the call starts from a state away from the anchor (a carried one)
    x.update({f"W{i}": a.expand(B, *a.shape) + 0.3 * randn(B, *a.shape)
              for i, a in enumerate(anchor)})  # fmt: skip
    x.update({f"S{i}": 0.1 * randn(B, *a.shape) for i, a in enumerate(anchor)})
    return {n: t.requires_grad_() for n, t in x.items()}


def run(x, structure, backend, *, rule, read, anchored=True, chunk=4, step="explicit"):
    L = len(structure.shapes())
    options = DeepMemoryOptions(structure, rule=rule, chunk_size=chunk, anchored=anchored,
                                dgd_step=step)  # fmt: skip
    o, (Ws, Ss) = deep_memory(
        *(x[n] for n in ("q", "k", "v", "theta", "eta", "alpha")), [x[f"W{i}"] for i in range(L)],
        options, read=read, output_final_state=True, backend=backend,
        momentum=[x[f"S{i}"] for i in range(L)] if "momentum" in rule else None,
        anchor=[x[f"A{i}"] for i in range(L)] if anchored else None,
    )  # fmt: skip
    return [o, *Ws, *(Ss or [])]


@pytest.mark.parametrize("structure", [LN, DEEP], ids=["layernorm", "depth3"])
@pytest.mark.parametrize("rule,step", [("gd", "explicit"), ("momentum", "explicit"),
                                       ("dgd", "explicit"), ("dgd", "proximal"),
                                       ("dgd_momentum", "proximal")])  # fmt: skip
@pytest.mark.parametrize("read", ["write_then_read", "read_then_write", "chunk_start"])
def test_chunk_form_matches_the_loop(structure, rule, step, read):
    x = leaves(structure)
    ref = run(x, structure, "naive", rule=rule, read=read, step=step)
    got = run(x, structure, "chunk", rule=rule, read=read, step=step)
    gen = torch.Generator().manual_seed(1)
    ups = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in ref]
    names = list(x)
    grads = [torch.autograd.grad(sum((t * u).sum() for t, u in zip(out, ups, strict=True)),
                                 [x[n] for n in names], allow_unused=True, materialize_grads=True)
             for out in (ref, got)]  # fmt: skip
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert_close(f"anchored output {i}", r, g, 1e-9)
    for n, r, g in zip(names, *grads, strict=True):
        assert_close(f"anchored d{n}", r, g, 1e-9)
    assert grads[1][names.index("A0")].abs().max() > 1e-3  # the anchor is learned through


@pytest.mark.parametrize("rule", ["gd", "dgd"])
def test_without_writes_the_state_decays_to_the_anchor(rule):
    x = leaves(LN, T=7)
    with torch.no_grad():
        x["theta"].zero_()
    for backend in ("naive", "chunk"):
        _, W0, W1 = run(x, LN, backend, rule=rule, read="write_then_read", chunk=3)
        keep = (1.0 - x["alpha"]).prod(dim=1)[..., None, None]  # [B, H, 1, 1]
        for i, W in enumerate((W0, W1)):
            want = x[f"A{i}"] + keep * (x[f"W{i}"] - x[f"A{i}"])
            assert_close(f"{backend} decayed state {i}", want, W, 1e-12)


@pytest.mark.parametrize("rule", ["momentum", "dgd"])
def test_anchored_differs_from_decay_toward_zero(rule):
    x = leaves(LN)
    a = run(x, LN, "chunk", rule=rule, read="write_then_read")
    z = run(x, LN, "chunk", rule=rule, read="write_then_read", anchored=False)
    assert (a[0] - z[0]).abs().max() > 1e-2 and (a[1] - z[1]).abs().max() > 1e-2


@pytest.mark.parametrize("fields,message", [
    (dict(retention="kl"), "l2 retention in the global mode"),
    (dict(retention_mode="local"), "l2 retention in the global mode"),
    (dict(rule="muon"), "gd, momentum and dgd rules"),
    (dict(window=3), "Omega window"),
])  # fmt: skip
def test_what_is_not_lowered_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DeepMemoryOptions(LN, anchored=True, **fields)


def test_an_anchor_goes_with_anchored_options():
    x = leaves(LN)
    inputs = [x[n] for n in ("q", "k", "v", "theta", "eta", "alpha")]
    with pytest.raises(ValueError, match="anchor is given exactly when"):
        deep_memory(*inputs, [x["W0"], x["W1"]], DeepMemoryOptions(LN), anchor=[x["A0"], x["A1"]])
    with pytest.raises(ValueError, match="anchor is given exactly when"):
        deep_memory(*inputs, [x["W0"], x["W1"]], DeepMemoryOptions(LN, anchored=True))
