"""Random damage to the shipped specs never crashes the checker and never loses a position.

Each shipped spec is mutated at random, both as parsed data (keys deleted, renamed with a typo,
values replaced, names swapped, nodes duplicated, numbers zeroed or blown up, kinds changed) and
as raw text (characters deleted, inserted or replaced, lines duplicated or swapped, truncation).
The property: `check_text` returns a `CheckedSpec` or raises `SpecError` whose every diagnostic
has a position in the spec (`file`, line >= 1, col >= 1) and is not an internal error; nothing
else escapes, and no call takes a second.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_helpers import assert_placed, shipped_spec_files

import nestdsl
from nestdsl.errors import SpecError
from nestdsl.spec import memory, ops, schema
from nestdsl.spec.loader import load_yaml

SPECS = shipped_spec_files()
FILE = "mutant.yaml"
DATA_EXAMPLES = 90  # per shipped spec
TEXT_EXAMPLES = 60

PROFILE = settings(
    deadline=None,  # tests never time anything (the loader bounds size, depth and aliases)
    derandomize=True,  # the same examples on every run (CI)
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _tags() -> list[str]:
    """Every `kind:` and `op:` value the schema knows."""
    found: set[str] = set()
    for module in (memory, ops, schema):
        for value in vars(module).values():
            fields = getattr(value, "model_fields", {})
            for disc in ("kind", "op"):
                if disc in fields:
                    found.update(a for a in typing.get_args(fields[disc].annotation)
                                 if isinstance(a, str))  # fmt: skip
    return sorted(found)


TAGS = _tags()


def check(text: str | bytes) -> None:
    """The property itself: a positioned report, or a spec that compiles and shows."""
    try:
        checked = nestdsl.check_text(text, FILE)
    except SpecError as err:
        assert err.errors, "a SpecError with no error in it"
        n_lines = (text.count(b"\n") if isinstance(text, bytes) else text.count("\n")) + 1
        for d in err.diagnostics:
            assert_placed(d, FILE)
            assert d.pos.line <= n_lines, f"{d} is past the end ({n_lines} lines)"
    else:
        for d in checked.warnings:
            assert_placed(d, FILE)
            assert d.severity == "warning"
        checked.plan.describe()  # every pass ran, and `show --after` prints the plan


# ---------------------------------------------------------------- mutating parsed data


def _paths(data, prefix=()) -> list[tuple]:
    out = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append(prefix + (key,))
            out.extend(_paths(value, prefix + (key,)))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.append(prefix + (i,))
            out.extend(_paths(value, prefix + (i,)))
    return out


def _get(data, path):
    for part in path:
        data = data[part]
    return data


def _strings(data) -> list[str]:
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in [k, *_strings(v)] if isinstance(s, str)]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return [data] if isinstance(data, str) else []


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
    st.sampled_from(TAGS),
    st.sampled_from(
        [
            "step",
            "never",
            "x",
            "d_model",
            "n_heads * 2",
            "d_model // 0",
            "1e-3",
            "+".join(["d_model"] * 300),
            "(" * 100 + "1" + ")" * 100,
            "-" * 500 + "1",
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(_TEXT | st.sampled_from(TAGS), inner, max_size=3),
    ),
    max_leaves=6,
)


def _typo(draw, word: str) -> str:
    if not word:
        return "x"
    i = draw(st.integers(0, len(word) - 1))
    how = draw(st.sampled_from(["drop", "double", "swap", "case", "replace"]))
    if how == "drop":
        return word[:i] + word[i + 1 :] or "x"
    if how == "double":
        return word[:i] + word[i] + word[i:]
    if how == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if how == "case":
        return word[:i] + word[i].swapcase() + word[i + 1 :]
    return word[:i] + draw(st.sampled_from("aeioxz_0-")) + word[i + 1 :]


@st.composite
def mutate_data(draw, original):
    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _get(data, path[:-1]), path[-1]
        how = draw(st.sampled_from(
            ["delete", "rename", "replace", "swap", "duplicate", "number", "kind", "name"]
        ))  # fmt: skip
        if how == "delete":
            del parent[last]
        elif how == "rename" and isinstance(parent, dict):
            parent[_typo(draw, str(last))] = parent.pop(last)
        elif how == "replace":
            parent[last] = draw(_VALUES)
        elif how == "swap":
            other = draw(st.sampled_from(paths))
            a, b = parent[last], _get(data, other)
            if isinstance(a, str) and isinstance(b, str):
                parent[last] = b
                _get(data, other[:-1])[other[-1]] = a
        elif how == "duplicate" and isinstance(parent, dict):
            parent[f"{last}_copy"] = copy.deepcopy(parent[last])
        elif how == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        elif how == "number":
            numbers = [p for p in paths if isinstance(_get(data, p), (int, float))]
            if numbers:
                target = draw(st.sampled_from(numbers))
                value = _get(data, target)
                _get(data, target[:-1])[target[-1]] = draw(
                    st.sampled_from([0, -1, -value, 10**9, 2**63, 10**30, 1e308, 0.5, float("nan")])
                )
        elif how == "kind":
            tags = [p for p in paths if p[-1] in ("kind", "op")]
            if tags:
                target = draw(st.sampled_from(tags))
                new = draw(st.sampled_from(TAGS) | _TEXT)
                _get(data, target[:-1])[target[-1]] = new
        elif how == "name":  # point a reference at another name of the spec
            names = _strings(data)
            if names and isinstance(parent[last], str):
                parent[last] = draw(st.sampled_from(names))
    return data


# ---------------------------------------------------------------- mutating raw text

_JUNK = st.text(
    st.sampled_from(list(":{}[]-#&*!|>'\",\t\n ?%@`\\") + ["\x00", "\ufeff", "é", "x", "1"]),
    min_size=1,
    max_size=6,
)


def _body_start(text: str) -> int:
    """The offset of the first line that is not a comment or blank."""
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("#"):
            return offset
        offset += len(line)
    return 0


@st.composite
def mutate_text(draw, original: str):
    text = original
    for _ in range(draw(st.integers(1, 3))):
        n = len(text)
        body = _body_start(text)  # damage the spec, not its header comment (mostly)
        i = draw(st.integers(0, max(n - 1, 0)) if body >= n else st.integers(body, n - 1))
        how = draw(
            st.sampled_from(["delete", "insert", "replace", "truncate", "dup-line", "swap-lines"])
        )
        if how == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)) :]
        elif how == "insert":
            text = text[:i] + draw(_JUNK) + text[i:]
        elif how == "replace":
            text = text[:i] + draw(_JUNK) + text[i + 1 :]
        elif how == "truncate":
            text = text[:i]
        else:
            lines = text.split("\n")
            a = draw(st.integers(0, len(lines) - 1))
            if how == "dup-line":
                lines.insert(a, lines[a])
            else:
                b = draw(st.integers(0, len(lines) - 1))
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    as_bytes = draw(st.booleans())
    return text.encode("utf-8") if as_bytes else text


# ---------------------------------------------------------------- the tests


def test_every_shipped_spec_is_mutated():
    assert SPECS, "no shipped specs found"
    names = {p.stem for p in SPECS}
    assert {"transformer", "gated-deltanet"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_data_mutations(path: Path):
    original = load_yaml(path.read_bytes(), FILE).data

    @settings(PROFILE, max_examples=DATA_EXAMPLES)
    @given(mutate_data(original))
    def run(data):
        check(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    run()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_text_mutations(path: Path):
    original = path.read_text("utf-8")

    @settings(PROFILE, max_examples=TEXT_EXAMPLES)
    @given(mutate_text(original))
    def run(text):
        check(text)

    run()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_unmutated_spec_passes_the_property(path: Path):
    check(path.read_bytes())
