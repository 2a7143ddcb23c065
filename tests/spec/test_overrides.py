"""`--set KEY=VALUE` overrides: applied before checking; their errors cite the flag, not the file."""

from __future__ import annotations

import pytest
from spec_helpers import SPECS

import nestdsl
from nestdsl.errors import SpecError


def errors_of(name: str, overrides: list[str]):
    with pytest.raises(SpecError) as info:
        nestdsl.load(name, overrides=overrides)
    errors = info.value.errors
    for d in errors:
        assert d.pos is not None and d.pos.file == "--set", d
        assert d.pos.col == 1
    return errors


def test_set_a_dim():
    checked = nestdsl.load("gated-deltanet", overrides=["dims.d_model=64"])
    assert checked.spec.dims["d_model"] == 64
    assert checked.shapes[("layer", "x2")] == (64,)
    assert nestdsl.load("gated-deltanet").spec.dims["d_model"] == 128  # the file is untouched


def test_set_several_values_and_types():
    checked = nestdsl.load(
        "transformer",
        overrides=[
            "dims.d_model=64",
            "dims.d_ff=176",
            "levels.pretrain.optimizer.lr=3e-4",
            "head.tied=true",
            "blocks.0.repeat=1",
            "description=a smaller transformer",
        ],
    )
    spec = checked.spec
    assert spec.dims["d_model"] == 64 and spec.dims["d_ff"] == 176
    assert spec.levels["pretrain"].optimizer.lr == 3e-4
    assert spec.head.tied is True
    assert spec.blocks[0].repeat == 1
    assert spec.description == "a smaller transformer"


def test_set_a_mapping_value():
    checked = nestdsl.load("gated-deltanet", overrides=["levels.pretrain.optimizer={kind: m3}"])
    assert checked.spec.levels["pretrain"].optimizer.kind == "m3"


def test_set_through_a_path_to_a_spec_file():
    path = SPECS / "transformer.yaml"
    checked = nestdsl.load(path, overrides=["dims.n_layers=1"])
    assert checked.spec.dims["n_layers"] == 1 and checked.file == str(path)


def test_later_overrides_win():
    checked = nestdsl.load("transformer", overrides=["dims.d_ff=100", "dims.d_ff=200"])
    assert checked.spec.dims["d_ff"] == 200


def test_unknown_key_cites_the_flag():
    (d,) = errors_of("gated-deltanet", ["dims.d_model=64", "levels.token.evry=2"])
    assert d.code == "unknown-key"
    assert "unknown key `evry`" in d.message and "did you mean `every`" in d.hint
    assert (d.pos.file, d.pos.line) == ("--set", 2)  # the second flag
    assert str(d).startswith("--set:2:1: error[unknown-key]")


def test_unknown_top_level_key():
    (d,) = errors_of("transformer", ["nmae=x"])
    assert d.code == "unknown-key" and "did you mean `name`" in d.hint


def test_bad_value_type():
    (d,) = errors_of("gated-deltanet", ["levels.token.every=often"])
    assert d.code == "bad-value"
    assert "`often` at `levels.token.every` is not an integer, `step` or `never`" in d.message


def test_bad_value_for_a_dim():
    (d,) = errors_of("gated-deltanet", ["dims.d_model=wide"])
    assert d.code == "bad-value" and "dims.d_model" in d.message


def test_a_bad_value_inside_a_mapping_override_cites_the_flag():
    """Positions of the replaced value's old children must not leak back into the file."""
    (d,) = errors_of("gated-deltanet", ["levels.token={every: sometimes}"])
    assert d.code == "bad-value" and "levels.token.every" in d.message


def test_a_valid_override_that_breaks_a_check_is_reported_in_the_file():
    with pytest.raises(SpecError) as info:
        nestdsl.load("transformer", overrides=["dims.d_head=31"])  # rope needs an even size
    errors = info.value.errors
    assert [d.code for d in errors] == ["dim-mismatch", "dim-mismatch"]
    assert {d.pos.file for d in errors} == {"specs/transformer.yaml"}
    assert all("rope needs a [heads, even dim] tensor, got [4, 31]" in d.message for d in errors)


@pytest.mark.parametrize("item", ["dims.d_model", "=64", "", "dims..d_model=64", "dims.=1"])
def test_not_key_value(item):
    (d,) = errors_of("gated-deltanet", [item])
    assert d.code == "bad-override"
    assert "is not KEY=VALUE" in d.message
    assert "--set dims.d_model=128" in d.hint


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nestdsl.x=1", "`nestdsl` is not a mapping in the spec"),
        ("name.first=x", "`name` is not a mapping in the spec"),
        ("dims.d_model.half=1", "`dims.d_model` is not a mapping in the spec"),
        ("nothing.here=1", "`nothing` is not in the spec"),
        ("blocks.7.repeat=1", "`blocks.7` is not in the spec"),
        ("blocks.first=1", "no item first in `blocks.first`"),
        ("blocks.9=1", "no item 9 in `blocks.9`"),
    ],
)
def test_path_through_a_scalar_or_a_missing_item(item, message):
    (d,) = errors_of("gated-deltanet", [item])
    assert d.code == "bad-override"
    assert message in d.message


def test_every_bad_override_is_reported_at_once():
    errors = errors_of("gated-deltanet", ["nope", "name.x=1", "dims.d_model=64"])
    assert [(d.code, d.pos.line) for d in errors] == [("bad-override", 1), ("bad-override", 2)]


def test_override_on_a_spec_that_is_not_a_mapping():
    with pytest.raises(SpecError) as info:
        nestdsl.check_text("- a\n- b\n", "list.yaml", ["x=1"])
    (d,) = info.value.errors
    assert d.code == "bad-override" and d.pos.file == "--set"
    with pytest.raises(SpecError) as info:
        nestdsl.check_text("just text\n", "text.yaml", ["x=1"])
    (d,) = info.value.errors
    assert d.code == "bad-override"


def test_odd_digits_in_a_path_are_names_not_indices():
    (d,) = errors_of("gated-deltanet", ["blocks.\u00b2=1"])  # superscript two: not an index
    assert d.code == "bad-override"


def test_null_removes_a_key_so_its_field_takes_its_default():
    hope = nestdsl.load("hope").spec.memories["M_memory"].structure
    assert hope.norm_eps == 0.01  # hope sets its own floor
    # norm_eps without a norm changes nothing, so it is an error at the flag ...
    with pytest.raises(SpecError) as info:
        nestdsl.load("hope", overrides=["memories.M_memory.structure.norm=none"])
    assert "`norm_eps`" in str(info.value) and "hope.yaml" in str(info.value)
    # ... and removing it with `=null` leaves a spec without the norm
    plain = nestdsl.load("hope", overrides=["memories.M_memory.structure.norm=none",
                                            "memories.M_memory.structure.norm_eps=null"])  # fmt: skip
    st = plain.spec.memories["M_memory"].structure
    assert st.norm == "none" and "norm_eps" not in st.model_fields_set
