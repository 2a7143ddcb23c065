"""Daily use of the command line: --version, `list`, and a vocabulary the data cannot fill
caught before a run folder exists (issue 14, items 2 and 9)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import nestdsl
from nestdsl.cli import main
from nestdsl.spec.shipped import shipped_names

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"nestdsl {nestdsl.__version__}"
    assert nestdsl.__version__ == importlib.metadata.version("nestdsl")  # pyproject's, not a copy


def test_list_names_every_shipped_spec_with_its_description(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[: len(shipped_names())]}
    assert sorted(rows) == shipped_names()
    assert rows["transformer"] == "Transformer++ with RMSNorm, SwiGLU and RoPE, byte-level."
    assert all(rows.values()), "every shipped spec says what it is"


@pytest.mark.parametrize("vocab", [100, 50000])
def test_a_vocabulary_the_bytes_do_not_fit_is_refused_at_the_flag(tmp_path, capsys, vocab):
    run = tmp_path / "run"
    argv = ["train", "transformer", "--set", f"dims.vocab={vocab}", "--out", str(run)]
    assert main(argv + ["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"--set:1:1: error[vocab-mismatch]: the spec's vocabulary is {vocab}" in err
    assert "256 token ids" in err and "dims.vocab=256" in err
    assert not run.exists(), "nothing is written before the check"


def test_a_vocabulary_in_the_spec_file_is_cited_at_its_line(tmp_path, capsys):
    text = (ROOT / "specs" / "transformer.yaml").read_text()
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("dims:"))
    spec = tmp_path / "big.yaml"
    spec.write_text(text.replace("vocab: 256,", "vocab: 50000,"))
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:{line}:" in err and "error[vocab-mismatch]" in err
    assert not (tmp_path / "run").exists()
