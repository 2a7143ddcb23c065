"""One IR: what `validate` accepts compiles, `show` counts what the module holds, and the
passes reject at a YAML position what no module implements."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nestdsl
from nestdsl.compiler.count import count_by_level
from nestdsl.errors import SpecError
from nestdsl.spec.shipped import shipped_names
from tests.compiler.helpers import small_overrides


def _by_level(model) -> dict[str, int]:
    params = dict(model.named_parameters())
    out: dict[str, int] = {}
    for name, level in model.parameter_levels().items():
        out[level] = out.get(level, 0) + params[name].numel()
    return out


VARIANTS = {  # (shipped spec, overrides) that a second copy of the counting rules got wrong
    "deltanet-learned-lr": ("deltanet", ["memories.M.rule.lr={kind: learned, init: 0.5}"]),
    "linear-attention-poly-learned": ("linear-attention", [
        "memories.M.feature_map={kind: polynomial, degree: 2}", "memories.M.normalize=false",
        "memories.M.init={kind: learned}"]),  # fmt: skip
    "hope-small": ("hope", ["dims.d_model=32", "dims.d_head=8"]),
}


@pytest.mark.parametrize("name", shipped_names())
def test_show_counts_what_the_module_holds(name):
    checked = nestdsl.load(name)
    model = nestdsl.compile(checked)
    counts = count_by_level(checked.plan)
    assert sum(c.parameters for c in counts.values()) == sum(p.numel() for p in model.parameters())
    assert {k: c.parameters for k, c in counts.items() if c.parameters} == _by_level(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_show_counts_variants(variant):
    name, overrides = VARIANTS[variant]
    checked = nestdsl.load(name, overrides)
    model = nestdsl.compile(checked)
    counts = count_by_level(checked.plan)
    assert {k: c.parameters for k, c in counts.items() if c.parameters} == _by_level(model)
    assert sum(c.parameters for c in counts.values()) == sum(p.numel() for p in model.parameters())


def test_linear_attention_chunked_validates_compiles_and_equals_per_token():
    """The dot objective's gradient ignores the state: every 16 tokens is every token."""
    base = small_overrides("linear-attention")
    per_token = nestdsl.load("linear-attention", base)
    chunked = nestdsl.load("linear-attention", [*base, "levels.token.every=16"])
    assert {m.kernel for m in chunked.plan.memories()} == {"linear_attention"}
    torch.manual_seed(0)
    a = nestdsl.compile(per_token).double()
    b = nestdsl.compile(chunked).double()
    b.load_state_dict(a.state_dict())
    tokens = torch.randint(0, 256, (2, 37))
    assert torch.allclose(a(tokens)[0], b(tokens)[0], rtol=0, atol=1e-12)


def test_unlowerable_normalize_is_a_positioned_error():
    text = nestdsl.load("linear-attention").text
    text = text.replace("order: write_then_read", "order: chunk_start")
    with pytest.raises(SpecError) as err:
        nestdsl.check_text(text.replace("token: {every: 1}", "token: {every: 4}"), "la.yaml")
    diag = next(d for d in err.value.errors if d.code == "not-lowered")
    assert diag.pos.file == "la.yaml" and diag.pos.line > 1
    assert "normalize" in text.splitlines()[diag.pos.line - 1]


def test_retention_toward_the_initial_state_is_lowered_or_a_positioned_error():
    text = nestdsl.load("titans-lmm").text.replace(
        "retention: {kind: l2, forget: alpha}", "retention: {kind: l2, forget: alpha, toward: init}")
    plan = nestdsl.check_text(text, "lmm.yaml").plan
    assert "toward the initial state" in plan.describe()
    hope = nestdsl.load("hope").text
    memory = hope.index("  M_memory:")
    hope = hope[:memory] + hope[memory:].replace("retention: {kind: l2, forget: forget}",
                                                 "retention: {kind: l2, forget: forget, toward: init}", 1)
    assert "toward the initial state" in nestdsl.check_text(hope, "hope.yaml").plan.describe()
    atlas = nestdsl.load("atlas").text.replace(
        "retention: {kind: l2, forget: alpha}", "retention: {kind: l2, forget: alpha, toward: init}")
    with pytest.raises(SpecError) as err:
        nestdsl.check_text(atlas, "atlas.yaml")
    diag = next(d for d in err.value.errors if "the `muon` rule" in d.message)
    assert diag.code == "not-lowered" and diag.pos.file == "atlas.yaml"
    assert "toward: init" in atlas.splitlines()[diag.pos.line - 1]


def test_hope_main_memory_decaying_toward_its_initial_state_streams_and_differs():
    """A dgd memory with `toward: init` compiles to a model that streams exactly (pieces equal
    one pass) and differs from the same model decaying toward zero."""
    anchored = [*small_overrides("hope"), "memories.M_memory.retention.toward=init"]
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load("hope", anchored)).double()
    plain = nestdsl.compile(nestdsl.load("hope", small_overrides("hope"))).double()
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model(tokens)
        first, state = model(tokens[:, :13])
        rest, _ = model(tokens[:, 13:], state)
        other, _ = plain(tokens)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, rtol=1e-10, atol=1e-10)
    assert (whole - other).abs().max() > 1e-6


def test_describe_is_readable():
    text = nestdsl.load("gated-deltanet").plan.describe()
    assert "layer.0-1" in text and "layer.1:" not in text  # identical layers printed once
    assert "{" not in text and "(d_model=" not in text  # no raw dicts
    assert "1 heads" not in text
    assert "changes after every token" in text
    hope = nestdsl.load("hope").plan.describe()
    assert "runs sequentially, 8 tokens at a time" in hope and "feedback" in hope


# What validates compiles (and runs), for shipped specs with their periods and sizes changed.
_PERIODS = st.sampled_from([1, 2, 3, 4, 8, 16])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(shipped_names()), period=_PERIODS, other=_PERIODS,
       T=st.integers(1, 20))  # fmt: skip
def test_whatever_validates_compiles(name, period, other, T):
    spec = nestdsl.load(name).spec
    overrides = small_overrides(name)
    in_context = [n for n, lv in spec.levels.items() if isinstance(lv.every, int)]
    for level, every in zip(in_context, [period, other, other, other, other, other]):
        overrides.append(f"levels.{level}.every={every}")
    try:
        checked = nestdsl.load(name, overrides)
    except SpecError as err:  # rejected: then at a position, with a code
        assert all(d.pos is not None and d.code for d in err.errors)
        return
    model = nestdsl.compile(checked)
    logits, _ = model(torch.randint(0, checked.plan.vocab, (1, T)))
    assert logits.shape == (1, T, checked.plan.vocab) and torch.isfinite(logits).all()


def test_sizes_too_large_to_build_are_rejected_where_declared():
    """Found by the property test: `vocab: 2**63` validated, then compiling overflowed."""
    with pytest.raises(SpecError) as err:
        nestdsl.load("deltanet", ["dims.vocab=9223372036854775808"])
    assert [d.code for d in err.value.errors] == ["size"]
    assert err.value.errors[0].pos.file == "--set"


@pytest.mark.parametrize("name", ["transformer", "gated-deltanet", "titans-lmm", "atlas", "hope"])
def test_flops_estimate_is_near_torchs_count(name):
    """`show`'s FLOPs per token, from sizes alone, against torch's count of one forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from nestdsl.compiler.count import flops_per_token

    checked = nestdsl.load(name, small_overrides(name))
    T = 64
    model = nestdsl.compile(checked).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, T, dtype=torch.long))
    ratio = flops_per_token(checked.plan, context=T) / (counter.get_total_flops() / T)
    assert 0.5 < ratio < 2.0, f"{name}: estimate / counted = {ratio:.2f}"


def test_a_repeat_too_large_to_expand_is_rejected_where_declared():
    """Found by the property test: `n_layers: 10**9` validated by expanding a billion layers."""
    with pytest.raises(SpecError) as err:
        nestdsl.load("hope", ["dims.n_layers=1000000000"])
    assert [d.code for d in err.value.errors] == ["size"]
