"""`nestdsl validate`, `show` and `schema`: exit codes, output, and no tracebacks for user mistakes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import nestdsl
from nestdsl.checks.levels import slowness
from nestdsl.cli import main
from nestdsl.commands.schema import json_schema

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
BAD = REPO / "tests" / "spec" / "bad"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# ---------------------------------------------------------------- validate


def test_validate_one_line_per_spec(capsys):
    code, out, err = run(capsys, "validate", "transformer", "gated-deltanet")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines == [
        "ok   specs/transformer.yaml: transformer: 2 levels, 1 memories, 1 block",
        "ok   specs/gated-deltanet.yaml: gated-deltanet: 2 levels, 1 memories, 1 block",
    ]


def test_validate_every_shipped_spec(capsys):
    names = [p.stem for p in SPECS]
    code, out, err = run(capsys, "validate", *names)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        assert re.fullmatch(rf"ok   specs/{re.escape(name)}\.yaml: {re.escape(name)}: "
                            r"\d+ levels?, \d+ memor(y|ies), \d+ blocks?", line), line  # fmt: skip


def test_validate_by_path(capsys):
    path = str(REPO / "specs" / "transformer.yaml")
    code, out, _ = run(capsys, "validate", path)
    assert code == 0 and out.startswith(f"ok   {path}: transformer:")


def test_validate_bad_spec_lists_errors_with_positions(capsys):
    path = str(BAD / "dim-mismatch-gate.yaml")
    code, out, err = run(capsys, "validate", path)
    assert code == 1 and out == ""
    assert err.startswith(f"FAIL {path}: 1 error in spec\n")
    assert re.search(rf"^  {re.escape(path)}:\d+:\d+: error\[dim-mismatch\]: memory `M` takes gate",
                     err, flags=re.M)  # fmt: skip


def test_validate_lists_every_error(capsys):
    path = str(BAD / "key-misspelt-in-node.yaml")
    code, _, err = run(capsys, "validate", path)
    assert code == 1
    assert "2 errors in spec" in err
    positions = re.findall(rf"^  {re.escape(path)}:(\d+):(\d+): error\[", err, flags=re.M)
    assert len(positions) == 2


def test_validate_good_and_bad_together(capsys):
    bad = str(BAD / "flow-cycle-self.yaml")
    code, out, err = run(capsys, "validate", "transformer", bad, "gated-deltanet")
    assert code == 1
    assert len(out.splitlines()) == 2  # both good specs still reported
    assert f"FAIL {bad}:" in err and "error[flow-cycle]" in err


def test_validate_prints_warnings(capsys, tmp_path):
    text = (REPO / "specs" / "gated-deltanet.yaml").read_text()
    text = text.replace("  token: {every: 1}", "  token: {every: 1}\n  spare: {every: 8}")
    path = tmp_path / "warn.yaml"
    path.write_text(text)
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0
    first, second = out.splitlines()
    assert first.endswith(", 1 warning")
    assert re.match(rf"  {re.escape(str(path))}:\d+:3: warning\[unused-level\]", second)


def test_validate_with_overrides(capsys):
    code, out, _ = run(capsys, "validate", "--set", "dims.d_model=64", "gated-deltanet")
    assert code == 0 and out.startswith("ok ")
    code, _, err = run(
        capsys, "validate", "--set", "dims.d_modle=64", "--set", "oops", "transformer"
    )
    assert code == 1
    assert "--set:2:1: error[bad-override]" in err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: str(d / "missing.yaml"), "no such spec file"),
        (lambda d: "no/such/dir/spec.yaml", "no such spec file"),
        (lambda d: "transformr", "did you mean `transformer`?"),
        (lambda d: str(d), "is not a file"),
        (lambda d: _write(d / "junk.yaml", bytes(range(256)) * 4), "error[not-text]"),
        (lambda d: _write(d / "junk.bin", b"\x7fELF\x02\x01\x01" + b"\x00" * 64), "error["),
        (lambda d: _write(d / "empty.yaml", b""), "error[empty]"),
        (lambda d: _write(d / "huge.yaml", b"#" * (2 << 20)), "error[too-large]"),
    ],
    ids=[
        "missing-file",
        "missing-dir",
        "unknown-name",
        "directory",
        "binary",
        "elf",
        "empty",
        "huge",
    ],  # fmt: skip
)
def test_validate_user_mistakes_are_one_line_not_tracebacks(capsys, tmp_path, make, message):
    target = make(tmp_path)
    code, out, err = run(capsys, "validate", target)
    assert code == 1 and out == ""
    assert err.startswith(f"FAIL {target}: ")
    assert message in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_validate_unreadable_file(capsys, tmp_path):
    path = _write(tmp_path / "secret.yaml", b"nestdsl: 1\n")
    os.chmod(path, 0)
    try:
        code, _, err = run(capsys, "validate", path)
    finally:
        os.chmod(path, 0o600)
    assert code == 1 and "cannot read" in err


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------- show


def _rows(out: str) -> list[list[str]]:
    """The level table's rows (it ends at the first blank line; notes follow)."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("--"))
    header = lines[rule - 1].split()
    assert header == ["level", "every", "members", "parameters", "state"]
    body = lines[rule + 1 :]
    body = body[: body.index("")] if "" in body else body
    return [re.split(r"\s{2,}", line.strip()) for line in body]


def _parameters_by_level(checked) -> Counter:
    """Trained numbers per level, from a real compiled model (show counts a meta-device one)."""
    model = nestdsl.compile(checked)
    params = dict(model.named_parameters())
    counts: Counter = Counter()
    for name, level in model.parameter_levels().items():
        counts[level] += params[name].numel()
    return counts


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_show_orders_levels_fastest_to_slowest(capsys, path):
    code, out, err = run(capsys, "show", path.stem)
    assert code == 0 and err == ""
    checked = nestdsl.load(path.stem)
    assert out.startswith(f"{checked.spec.name} (specs/{path.stem}.yaml)\n")
    rows = _rows(out)
    assert [r[0] for r in rows] == sorted(
        checked.spec.levels, key=lambda n: slowness(checked.spec.levels[n].every)
    )
    assert len(rows) == len(checked.spec.levels)
    keys = [slowness(checked.spec.levels[r[0]].every) for r in rows]
    assert keys == sorted(keys)
    counts = _parameters_by_level(checked)
    for row in rows:
        assert row[3] == (f"{counts[row[0]]:,}" if counts[row[0]] else "-")


def test_show_transformer_table(capsys):
    code, out, _ = run(capsys, "show", "transformer")
    assert code == 0
    rows = _rows(out)
    assert [(r[0], r[1]) for r in rows] == [("token", "1 token"), ("pretrain", "step")]
    assert rows[0][2] == "A"
    assert rows[1][2] == "embed, blocks, head"
    params = int(rows[1][3].replace(",", ""))
    assert params > 100_000  # embedding, two layers, head
    assert "Transformer++" in out


def test_show_with_override_changes_counts(capsys):
    _, small, _ = run(capsys, "show", "--set", "dims.n_layers=1", "transformer")
    _, large, _ = run(capsys, "show", "transformer")
    assert int(_rows(small)[-1][3].replace(",", "")) < int(_rows(large)[-1][3].replace(",", ""))


def test_show_bad_spec_and_missing_file(capsys, tmp_path):
    code, out, err = run(capsys, "show", str(BAD / "bad-dim-zero.yaml"))
    assert code == 1 and out == ""
    assert err.startswith("nestdsl show: error: 1 error in spec")
    assert "error[bad-dim]" in err
    code, _, err = run(capsys, "show", str(tmp_path / "nope.yaml"))
    assert code == 1 and "no such spec file" in err
    code, _, err = run(capsys, "show", str(tmp_path))
    assert code == 1 and "is not a file" in err


# ---------------------------------------------------------------- schema


def test_schema_to_stdout_is_json(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    assert {"nestdsl", "dims", "levels", "memories", "embed", "blocks", "head"} <= set(
        schema["properties"]
    )


def test_schema_output_file(capsys, tmp_path):
    target = tmp_path / "nestdsl.schema.json"
    code, out, _ = run(capsys, "schema", "-o", str(target))
    assert code == 0
    assert out.strip() == f"wrote {target}"
    assert json.loads(target.read_text()) == json_schema()


def test_schema_output_to_a_bad_place(capsys, tmp_path):
    code, _, err = run(capsys, "schema", "-o", str(tmp_path / "no" / "dir" / "s.json"))
    assert code == 1 and err.startswith("nestdsl schema: error: cannot write")
    code, _, err = run(capsys, "schema", "-o", str(tmp_path))
    assert code == 1 and "cannot write" in err


# ---------------------------------------------------------------- a real process


def test_python_m_nestdsl_validate():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "nestdsl", "validate", "transformer"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok   specs/transformer.yaml: transformer:")
    assert "Traceback" not in result.stderr


def test_python_m_nestdsl_binary_file_has_no_traceback(tmp_path):
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\x00\xff" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "nestdsl", "validate", str(junk), str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("FAIL ") == 2
