"""DeepMemoryOptions: built from plain values, frozen, every bad field named in its message,
and the per-call tensor checks of ``deep_memory``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nestdsl.kernels import DeepMemoryOptions as Exported
from nestdsl.kernels.deep_memory import (
    DeepMemoryOptions,
    MemoryStructure,
    deep_memory,
    matrix_memory,
)

MLP = MemoryStructure(4, 4, depth=2, expansion=2)


def test_built_from_plain_values_and_frozen():
    o = DeepMemoryOptions(structure=MLP, objective="lp", p=3, rule="muon", ns_steps=3,
                          ns_kind="cubic", retention="lq", q_norm=4.0, chunk_size=8)  # fmt: skip
    assert Exported is DeepMemoryOptions
    assert o.has_momentum and not DeepMemoryOptions(MLP).has_momentum
    assert o == DeepMemoryOptions(**{f.name: getattr(o, f.name) for f in dataclasses.fields(o)})
    assert hash(o) == hash(dataclasses.replace(o))
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.rule = "gd"  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(objective="cosine"), "objective must be one of"),
        (dict(rule="adam"), "rule must be one of"),
        (dict(retention="l1"), "retention must be one of"),
        (dict(ns_kind="septic"), "ns_kind must be one of"),
        (dict(dgd_step="implicit"), "dgd_step must be one of"),
        (dict(p=1.0), "p > 1"),
        (dict(delta=0.0), "delta must be a number > 0"),
        (dict(q_norm=1.0), "q_norm > 1"),
        (dict(kl_scale=-1.0), "kl_scale > 0"),
        (dict(chunk_size=0), "chunk_size must be an int >= 1"),
        (dict(chunk_size=True), "chunk_size must be an int >= 1"),
        (dict(window=2.0), "window must be an int >= 1"),
        (dict(ns_steps=0), "ns_steps must be an int >= 1"),
        (dict(dgd_step="proximal"), "dgd_step='proximal' is a step of the dgd rules"),
        (dict(rule="dgd", window=3), "takes no window"),
        (dict(retention_mode="decay"), "retention_mode must be one of"),
        (dict(retention_mode="local", retention="kl"), "the l2 retention's"),
        (dict(retention_mode="local", rule="dgd"), "lowered for gd, momentum and muon"),
        (dict(retention_mode="local", window=2), "not lowered together with an Omega window"),
        (dict(lag_token=1), "lag_token must be a bool"),
        (dict(lag_token=True), "lag_token is Memora's"),
        (dict(lag_token=True, retention="kl", window=2), "lag_token is not lowered together"),
    ],
)
def test_each_bad_field_is_named(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DeepMemoryOptions(MLP, **fields)


def test_all_problems_at_once():
    with pytest.raises(ValueError) as err:
        DeepMemoryOptions(MLP, rule="adam", chunk_size=0, retention="l1")
    assert all(f in str(err.value) for f in ("rule", "chunk_size", "retention"))


def test_segments_split_a_chunk_after_the_lag_token():
    assert DeepMemoryOptions(MLP, chunk_size=8).segments() == ((0, 8),)
    lag = DeepMemoryOptions(MLP, chunk_size=8, retention="kl", lag_token=True)
    assert lag.segments() == ((0, 1), (1, 8))
    assert dataclasses.replace(lag, chunk_size=1).segments() == ((0, 1),)


def test_structure_must_be_a_memory_structure():
    with pytest.raises(ValueError, match="structure must be a MemoryStructure"):
        DeepMemoryOptions((4, 4))  # type: ignore[arg-type]


def test_call_checks():
    B, T, H = 1, 5, 1
    x, g = torch.randn(B, T, H, 3), torch.rand(B, T, H)
    w = [torch.zeros(B, H, 3, 3)]
    opts = DeepMemoryOptions(matrix_memory(3, 3), chunk_size=2)
    with pytest.raises(TypeError, match="options must be a DeepMemoryOptions"):
        deep_memory(x, x, x, g, g, g, w, {"chunk_size": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read must be one of"):
        deep_memory(x, x, x, g, g, g, w, opts, read="never")
    with pytest.raises(ValueError, match="delta must be"):
        deep_memory(x, x, x, g, g, g, w, opts, delta=g[:, :3])
    with pytest.raises(ValueError, match="per-token Huber delta"):
        deep_memory(x, x, x, g, g, g, w, dataclasses.replace(opts, window=2), delta=g)
    with pytest.raises(ValueError, match="only used by rules with momentum"):
        deep_memory(x, x, x, g, g, g, w, opts, momentum=w)
