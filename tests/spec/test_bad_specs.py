"""The corpus of malformed specs: each file says, in its first lines, which errors it must produce.

    # expect: 23:26 error[dim-mismatch] takes gate of shape [4]

is `line:col`, the code, and a substring of the message. Every expectation must match a distinct
error, and the spec must produce no other error. Hostile inputs that cannot carry their own
expectations (an empty file, a file over a megabyte) are built here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from spec_helpers import SPECS, assert_placed

import nestdsl
from nestdsl.errors import SpecError
from nestdsl.spec.loader import MAX_BYTES

BAD = Path(__file__).parent / "bad"
CORPUS = sorted(BAD.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+) (error|warning)\[([a-z0-9-]+)\] (.+)$")


def expectations(data: bytes) -> list[tuple[int, int, str, str, str]]:
    """(line, col, severity, code, substring) from the leading comment lines of a corpus file."""
    found = []
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line.startswith("#"):
            break
        if line.startswith("# expect:"):
            match = EXPECT.match(line)
            assert match, f"malformed expectation: {line!r}"
            ln, col, severity, code, text = match.groups()
            found.append((int(ln), int(col), severity, code, text.rstrip()))
    return found


def check_file(path: Path) -> list:
    data = path.read_bytes()
    try:
        checked = nestdsl.check_text(data, path.name)
    except SpecError as err:
        return err.diagnostics
    pytest.fail(f"{path.name} passed the checks (warnings: {checked.warnings})")


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_file(path: Path):
    expected = expectations(path.read_bytes())
    assert expected, f"{path.name} declares no `# expect:` line"
    diagnostics = check_file(path)
    errors = [d for d in diagnostics if d.severity == "error"]
    for d in diagnostics:
        assert_placed(d, path.name)
    shown = "\n".join(f"  {d}" for d in diagnostics)
    assert len(errors) == len(expected), f"{len(errors)} errors, {len(expected)} expected:\n{shown}"
    unmatched = list(errors)
    for line, col, severity, code, text in expected:
        match = next(
            (
                d
                for d in unmatched
                if (d.pos.line, d.pos.col, d.severity, d.code) == (line, col, severity, code)
                and text in d.message
            ),
            None,
        )
        assert match is not None, f"no {line}:{col} {severity}[{code}] {text!r} in:\n{shown}"
        unmatched.remove(match)


def test_corpus_is_large_and_covers_every_code():
    assert len(CORPUS) >= 45
    codes = {e[3] for path in CORPUS for e in expectations(path.read_bytes())}
    required = {
        # YAML and schema
        "yaml-syntax", "yaml-tag", "yaml-merge", "too-deep", "too-large", "not-text", "empty",
        "not-a-mapping", "duplicate-key", "bad-key", "unknown-key", "missing-key", "unknown-kind",
        "bad-value", "version",
        # graph checks
        "flow-cycle", "level-order", "chunk-divisibility", "dangling-ref", "unused-memory",
        "dim-mismatch", "bad-dim", "objective-structure", "params-without-level",
        "no-outer-level", "optimizer-missing", "optimizer-placement", "duplicate-name",
    }  # fmt: skip
    assert required <= codes, f"no corpus file for: {sorted(required - codes)}"


def test_corpus_derives_from_shipped_specs():
    """Most malformed specs are small edits of a shipped one (so they exercise real wiring)."""
    names = {f"name: {p.stem}" for p in SPECS.glob("*.yaml")}
    derived = [p for p in CORPUS if any(n in p.read_text("utf-8", "replace") for n in names)]
    assert len(derived) >= len(CORPUS) // 2


# ---------------------------------------------------------------- inputs built in the test


def only_error(data: bytes | str, file: str = "gen.yaml"):
    with pytest.raises(SpecError) as info:
        nestdsl.check_text(data, file)
    errors = info.value.errors
    assert len(errors) == 1, info.value
    assert_placed(errors[0], file)
    return errors[0]


@pytest.mark.parametrize("data", [b"", "", b"   \n\n  \n", "\n"])
def test_empty_file(data):
    d = only_error(data)
    assert (d.code, d.pos.line, d.pos.col) == ("empty", 1, 1)
    assert "nestdsl: 1" in d.hint


def test_huge_file_is_refused_before_parsing():
    valid = (SPECS / "gated-deltanet.yaml").read_bytes()
    padding = b"# " + b"x" * 78 + b"\n"
    data = valid + padding * (MAX_BYTES // len(padding) + 1)
    assert len(data) > 1_000_000
    for form in (data, data.decode()):
        d = only_error(form)
        assert d.code == "too-large"
        assert f"the limit is {MAX_BYTES}" in d.message


def test_huge_file_through_load(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"nestdsl: 1\n" + b"a" * (2 * MAX_BYTES))
    with pytest.raises(SpecError) as info:
        nestdsl.load(path)
    (d,) = info.value.errors
    assert d.code == "too-large" and d.pos.file == str(path)


@pytest.mark.parametrize(
    "junk",
    [
        bytes(range(256)),
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",  # a JPEG header
        b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8,  # an ELF header: valid UTF-8, but NULs
        b"nestdsl: 1\nname: ok\n\xc3\x28",  # an invalid two-byte sequence on line 3
    ],
)
def test_binary_junk(junk):
    d = only_error(junk)
    assert d.code in ("not-text", "yaml-syntax")


def test_binary_junk_is_placed_at_the_bad_byte():
    d = only_error(b"nestdsl: 1\nname: ok\nab\xc3\x28")
    assert (d.code, d.pos.line, d.pos.col) == ("not-text", 3, 3)


def test_every_corpus_error_survives_bytes_and_str():
    """`check_text` takes bytes or str; both give the same diagnostics (for UTF-8 files)."""
    for path in CORPUS:
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        with pytest.raises(SpecError) as from_bytes:
            nestdsl.check_text(data, path.name)
        with pytest.raises(SpecError) as from_str:
            nestdsl.check_text(text, path.name)
        assert from_bytes.value.diagnostics == from_str.value.diagnostics, path.name


# ---------------------------------------------------------------- warnings on valid specs

GDN = (SPECS / "gated-deltanet.yaml").read_text()


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def test_unreachable_node_is_a_warning():
    text = GDN.replace(
        "      x2:   {op: add, in: [x1, f]}\n",
        "      x2:   {op: add, in: [x1, f]}\n      spare: {op: linear, in: h2, out: d_model}\n",
    )
    checked = nestdsl.check_text(text, "gdn.yaml")
    (warning,) = checked.warnings
    assert (warning.severity, warning.code) == ("warning", "unreachable")
    assert (warning.pos.line, warning.pos.col) == (line_of(text, "      spare:"), 7)
    assert "`spare` does not contribute to `x2`" in warning.message


def test_unused_level_is_a_warning():
    text = GDN.replace("  token: {every: 1}", "  token: {every: 1}\n  chunk: {every: 64}")
    checked = nestdsl.check_text(text, "gdn.yaml")
    (warning,) = checked.warnings
    assert (warning.severity, warning.code) == ("warning", "unused-level")
    assert (warning.pos.line, warning.pos.col) == (line_of(text, "  chunk:"), 3)
    assert "level `chunk` is used by nothing" in warning.message


def test_warnings_are_not_reported_with_errors():
    """A dangling name orphans its inputs; the unused-node warnings wait until it is fixed."""
    text = GDN.replace("out: x2", "out: x3")
    with pytest.raises(SpecError) as info:
        nestdsl.check_text(text, "gdn.yaml")
    assert [d.code for d in info.value.diagnostics] == ["dangling-ref"]


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_are_valid_and_quiet(path: Path):
    checked = nestdsl.check_text(path.read_bytes(), str(path))
    assert checked.warnings == []
    assert checked.name == path.stem
