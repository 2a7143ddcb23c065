"""The safe YAML loader: plain data, YAML 1.2 scalars, and a source map of every key and value."""

from __future__ import annotations

import math

import pytest
from spec_helpers import SPECS, assert_placed

import nestdsl
from nestdsl.errors import Position, SpecError
from nestdsl.spec.loader import MAX_DEPTH, load_yaml

TEXT = """\
nestdsl: 1
name: demo
dims: {d: 16, heads: 2}
levels:
  token: {every: 1}
  pretrain:
    every: step
    optimizer: {kind: adamw, lr: 3e-4, betas: [0.9, 0.95]}
blocks:
  - name: layer
    nodes:
      on:  {op: rmsnorm, in: x}
      q:   {op: linear, in: on, out: [heads, d], then: [short_conv, silu]}
      deep: {a: {b: [1, {c: two}]}}
    out: q
"""


@pytest.fixture(scope="module")
def loaded():
    return load_yaml(TEXT, "demo.yaml")


def at(line: int, col: int) -> Position:
    return Position("demo.yaml", line, col)


@pytest.mark.parametrize(
    ("path", "line", "col"),
    [
        (("nestdsl",), 1, 10),
        (("dims",), 3, 7),
        (("dims", "d"), 3, 11),
        (("dims", "heads"), 3, 22),
        (("levels", "token"), 5, 10),
        (("levels", "token", "every"), 5, 18),
        (("levels", "pretrain", "every"), 7, 12),
        (("levels", "pretrain", "optimizer", "lr"), 8, 34),
        (("levels", "pretrain", "optimizer", "betas"), 8, 47),
        (("levels", "pretrain", "optimizer", "betas", 0), 8, 48),
        (("levels", "pretrain", "optimizer", "betas", 1), 8, 53),
        (("blocks", 0), 10, 5),
        (("blocks", 0, "name"), 10, 11),
        (("blocks", 0, "nodes", "q", "out", 0), 13, 39),
        (("blocks", 0, "nodes", "q", "out", 1), 13, 46),
        (("blocks", 0, "nodes", "q", "then", 1), 13, 69),
        (("blocks", 0, "nodes", "deep", "a", "b", 1, "c"), 14, 29),
        (("blocks", 0, "out"), 15, 10),
    ],
)
def test_value_positions(loaded, path, line, col):
    assert loaded.source.values[path] == at(line, col)
    lines = TEXT.splitlines()
    value = loaded.data
    for part in path:
        value = value[part]
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        assert lines[line - 1][col - 1 :].startswith(str(value))


@pytest.mark.parametrize(
    ("path", "line", "col"),
    [
        (("nestdsl",), 1, 1),
        (("levels",), 4, 1),
        (("levels", "token"), 5, 3),
        (("levels", "token", "every"), 5, 11),
        (("levels", "pretrain", "optimizer", "betas"), 8, 40),
        (("blocks", 0, "nodes", "on"), 12, 7),
        (("blocks", 0, "nodes", "q", "then"), 13, 50),
        (("blocks", 0, "nodes", "deep", "a", "b"), 14, 18),
    ],
)
def test_key_positions(loaded, path, line, col):
    assert loaded.source.keys[path] == at(line, col)
    key = str(path[-1])
    assert TEXT.splitlines()[line - 1][col - 1 :].startswith(key)


def test_find_falls_back_to_the_nearest_ancestor(loaded):
    source = loaded.source
    assert source.find(("levels", "token", "nothing", "here")) == at(5, 10)
    assert source.find(("levels", "token", "nothing"), key=True) == at(5, 3)
    assert source.find(("nowhere",)) == source.values[()]
    assert source.values[()] == at(1, 1)


def test_yaml_12_booleans(loaded):
    """`on`, `no`, `y`, `off`, `yes` are strings; only true/false are booleans."""
    nodes = loaded.data["blocks"][0]["nodes"]
    assert "on" in nodes and True not in nodes
    assert nodes["q"]["in"] == "on"
    data = load_yaml("a: [on, off, yes, no, y, n, True, false, FALSE]", "b.yaml").data
    assert data["a"] == ["on", "off", "yes", "no", "y", "n", True, False, False]


def test_yaml_12_booleans_survive_the_whole_pipeline():
    text = (SPECS / "gated-deltanet.yaml").read_text()
    assert "      on:   {op: rmsnorm, in: o}" in text
    checked = nestdsl.check_text(text, "gdn.yaml")
    assert "on" in checked.spec.blocks[0].nodes
    assert checked.spec.blocks[0].nodes["og"].in_ == ["on", "gate"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("3e-4", 3e-4), ("1E5", 1e5), ("-2e+3", -2e3), ("1.5e-3", 1.5e-3), ("2.", 2.0), (".5", 0.5)],
)
def test_exponent_floats(text, value):
    got = load_yaml(f"lr: {text}", "f.yaml").data["lr"]
    assert isinstance(got, float) and got == value


def test_learning_rate_without_a_dot_reaches_the_optimizer(loaded):
    assert loaded.data["levels"]["pretrain"]["optimizer"]["lr"] == 3e-4
    text = (SPECS / "transformer.yaml").read_text().replace("lr: 2.0e-3", "lr: 3e-4")
    assert nestdsl.check_text(text, "t.yaml").spec.levels["pretrain"].optimizer.lr == 3e-4


def test_other_scalars():
    data = load_yaml("a: 12\nb: 0x10\nc: ~\nd: null\ne: .inf\nf: '3e-4'\ng: 1_000", "s.yaml").data
    assert data["a"] == 12 and data["b"] == 16
    assert data["c"] is None and data["d"] is None
    assert math.isinf(data["e"])
    assert data["f"] == "3e-4"  # quoted: a string
    assert data["g"] == 1000


def test_duplicate_keys_report_both_lines():
    text = (
        "nestdsl: 1\nlevels:\n  token: {every: 1}\n  pretrain: {every: step}\n  token: {every: 4}\n"
    )
    with pytest.raises(SpecError) as info:
        load_yaml(text, "dup.yaml")
    (d,) = info.value.errors
    assert d.code == "duplicate-key"
    assert (d.pos.line, d.pos.col) == (5, 3)  # the second occurrence
    assert "first at line 3" in d.message  # and the first


def test_duplicate_keys_in_a_flow_mapping():
    with pytest.raises(SpecError) as info:
        load_yaml("a: {x: 1, y: 2, x: 3}", "dup.yaml")
    (d,) = info.value.errors
    assert (d.code, d.pos.line, d.pos.col) == ("duplicate-key", 1, 17)
    assert "'x' appears twice (first at line 1)" in d.message


def test_every_duplicate_is_reported():
    with pytest.raises(SpecError) as info:
        load_yaml("a: 1\nb: 2\na: 3\nb: 4\n", "dup.yaml")
    assert [(d.code, d.pos.line) for d in info.value.errors] == [
        ("duplicate-key", 3),
        ("duplicate-key", 4),
    ]


def test_small_aliases_are_plain_data():
    data = load_yaml("a: &x {every: 1}\nb: *x\n", "alias.yaml").data
    assert data == {"a": {"every": 1}, "b": {"every": 1}}


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']",
        "a: !!python/object/new:dict {}",
        "a: !!python/tuple [1, 2]",
        "a: !!python/name:os.system",
        "a: !!set {x, y}",
        "a: !!omap [x: 1]",
        "a: !!binary aGk=",
        "a: !custom 1",
        "!!python/object:object {}",
    ],
)
def test_tags_are_refused(text):
    with pytest.raises(SpecError) as info:
        load_yaml(text, "tag.yaml")
    (d,) = info.value.errors
    assert d.code == "yaml-tag"
    assert_placed(d, "tag.yaml")


def test_explicit_standard_tags_are_fine():
    data = load_yaml("a: !!str 12\nb: !!int '7'\nc: !!map {x: 1}\nd: !!seq [1]", "t.yaml").data
    assert data == {"a": "12", "b": 7, "c": {"x": 1}, "d": [1]}


def test_nesting_limit():
    ok = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    load_yaml(ok, "deep.yaml")
    with pytest.raises(SpecError) as info:
        load_yaml("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5), "deep.yaml")
    assert info.value.errors[0].code == "too-deep"


def test_block_style_deep_nesting():
    text = "".join("  " * i + f"k{i}:\n" for i in range(150)) + "  " * 150 + "v\n"
    with pytest.raises(SpecError) as info:
        load_yaml(text, "deep.yaml")
    (d,) = info.value.errors
    assert d.code == "too-deep"
    assert_placed(d, "deep.yaml")


def test_a_loader_error_never_escapes_as_another_exception():
    for text in ["a: b: c", "[", "{", "- a\nb: 1", "a: 'x", "a: *nope", "? [1]\n: 2", "\t- a"]:
        with pytest.raises(SpecError) as info:
            load_yaml(text, "x.yaml")
        for d in info.value.errors:
            assert_placed(d, "x.yaml")


def test_positions_count_characters_not_bytes():
    loaded = load_yaml("name: \u00e9t\u00e9\nx: {\u00e9: 1, b: 2}\n", "u.yaml")
    assert loaded.source.keys[("x", "b")] == Position("u.yaml", 2, 11)


def test_bytes_with_a_byte_order_mark():
    data = load_yaml("\ufeffa: 1\n".encode(), "bom.yaml").data
    assert data == {"a": 1}
