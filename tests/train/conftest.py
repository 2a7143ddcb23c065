"""Shared fixtures for training tests: a small corpus, tiny settings, fake spec loading."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:  # subprocess entry points and tests import toymodel by name
    sys.path.insert(0, str(HERE))

from toymodel import fake_compile, fake_load  # noqa: E402

import nestdsl  # noqa: E402
from nestdsl.data import load_corpus  # noqa: E402

CORPUS_BYTES = 40_000


@pytest.fixture(scope="session")
def corpus() -> bytes:
    return load_corpus()[:CORPUS_BYTES]


@pytest.fixture
def corpus_file(tmp_path, corpus) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(corpus)
    return path


@pytest.fixture
def fake_specs(monkeypatch):
    """nestdsl.load / nestdsl.compile replaced by the toy stand-ins (until the compiler lands)."""
    monkeypatch.setattr(nestdsl, "load", fake_load, raising=False)
    monkeypatch.setattr(nestdsl, "compile", fake_compile, raising=False)


@pytest.fixture
def our_cli(monkeypatch):
    """nestdsl.cli.main restricted to the commands of this package (the others may not exist yet)."""
    import nestdsl.cli

    monkeypatch.setattr(nestdsl.cli, "COMMANDS", ["train", "generate"])
    return nestdsl.cli.main
