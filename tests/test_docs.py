"""The docs stay true: the tutorial's finished spec exists, and its printed outputs are real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nestdsl.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "delta-cms.yaml"


def console_blocks(text: str) -> list[tuple[str, str]]:
    """(command, output) for every `$ nestdsl ...` line of the ```console blocks."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for part in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = part.partition("\n")
            out.append((command.strip(), output))
    return out


FINAL = [(c, o) for c, o in console_blocks((ROOT / "docs" / "tutorial.md").read_text())
         if c.startswith("nestdsl show delta-cms.yaml") and "C_slow" in o]  # fmt: skip


def test_the_tutorial_shows_the_finished_spec():
    assert len(FINAL) == 2


@pytest.mark.parametrize("command,expected", FINAL, ids=["show", "show --set"])
def test_tutorial_outputs_are_what_the_tool_prints(command, expected, capsys, monkeypatch):
    monkeypatch.chdir(EXAMPLE.parent)
    assert main(command.split()[1:]) == 0
    assert capsys.readouterr().out == expected


def test_the_tutorial_spec_compiles_and_streams():
    import torch

    import nestdsl

    model = nestdsl.compile(nestdsl.load(EXAMPLE)).double()
    tokens = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        whole, _ = model(tokens)
        a, state = model(tokens[:, :21])
        b, _ = model(tokens[:, 21:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), whole)
