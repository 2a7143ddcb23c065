"""The docs stay true: the tutorial's finished spec exists, and its printed outputs are real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import nestdsl
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


# ----------------------------------------------------------------------------- every code block
#
# Every fenced block of the README and docs/*.md is checked by its language: python blocks run
# (in a scratch folder holding the small trained runs they name), bash and console command lines
# parse with the real CLI parser (or name a file, module or tool that exists), json lines and
# yaml blocks parse. Unlabelled and `text` blocks are prose (diagrams, math, file trees); a
# block in any other language fails the test rather than being skipped.

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHECKED_LANGUAGES = {"python", "bash", "console", "json", "yaml", "", "text"}


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, line, body) of every fenced block in a markdown file."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append((match.group(1), i + 1, "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


ALL_BLOCKS = [(path, *block) for path in DOCS for block in code_blocks(path)]


def _ids(blocks) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}" for path, _, line, _ in blocks]


def of(*languages: str) -> list:
    found = [b for b in ALL_BLOCKS if b[1] in languages]
    return [pytest.param(*b, id=i) for b, i in zip(found, _ids(found), strict=True)]


def test_every_block_has_a_checked_language():
    assert len(ALL_BLOCKS) > 20
    strange = [(i, b[1]) for b, i in zip(ALL_BLOCKS, _ids(ALL_BLOCKS), strict=True)
               if b[1] not in CHECKED_LANGUAGES]  # fmt: skip
    assert not strange, f"blocks in a language this test does not check: {strange}"


def shell_commands(language: str, body: str) -> list[str]:
    """The command lines of a block: every line of bash, the `$ ` lines of a console block."""
    commands = []
    body = body.replace("\\\n", " ")  # a backslash-newline continues the command line
    for raw in body.splitlines():
        if language == "console":
            if not raw.startswith("$ "):
                continue
            raw = raw[2:]
        line = raw.split(" #")[0].strip()
        if line and not line.startswith("#"):
            commands.extend(part.strip() for part in re.split(r"&&|\|\||;", line))
    return [c for c in commands if c]


def check_command(command: str) -> None:
    """Fail unless `command` would start: nestdsl argv parses, files and modules exist."""
    import importlib.util
    import shlex
    import shutil

    from nestdsl.cli import build_parser

    words = shlex.split(command)
    while words and re.match(r"^[A-Z_]+=", words[0]):  # OMP_NUM_THREADS=1 nestdsl ...
        words = words[1:]
    program, args = Path(words[0]).name, words[1:]
    if program == "torchrun":  # torchrun [its flags] -m nestdsl ARGS
        assert "-m" in args and args[args.index("-m") + 1] == "nestdsl", command
        program, args = "nestdsl", args[args.index("-m") + 2 :]
    if program in ("python", "python3") and args[:1] == ["-m"]:
        if args[1] == "nestdsl":
            program, args = "nestdsl", args[2:]
        else:
            assert importlib.util.find_spec(args[1]) is not None, command
            return
    if program == "nestdsl":
        try:
            build_parser().parse_args(args)
        except SystemExit as exited:
            assert exited.code == 0, f"the CLI rejects: {command}"
        return
    if program == "bash":
        assert (ROOT / args[0]).is_file(), command
        return
    assert shutil.which(program) or program in ("cd", "pip"), f"unknown program in: {command}"


@pytest.mark.parametrize("path,language,line,body", of("bash", "console"))
def test_shell_blocks_parse(path, language, line, body, capsys):
    commands = shell_commands(language, body)
    assert commands, "a shell block with no command"
    for command in commands:
        check_command(command)


@pytest.mark.parametrize("path,language,line,body", of("json"))
def test_json_blocks_parse(path, language, line, body):
    import json

    for text in filter(None, (t.strip() for t in body.splitlines())):
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("path,language,line,body", of("yaml"))
def test_yaml_blocks_parse(path, language, line, body):
    import yaml

    # Excerpts: `...` elides lines (YAML would read a document end), and an excerpt from inside
    # a spec keeps its indentation, so it gets placeholder parents to nest under.
    lines = ["# elided" if t.strip() == "..." else t for t in body.splitlines()]
    indent = len(lines[0]) - len(lines[0].lstrip())
    parents = [" " * k + f"_{k}:" for k in range(0, indent, 2)]
    assert yaml.safe_load("\n".join(parents + lines)) is not None


def _agrees(excerpt, shipped) -> bool:
    """Every key and value an excerpt shows is the shipped spec's (lists of nodes may stop early)."""
    if isinstance(excerpt, dict):
        return isinstance(shipped, dict) and all(
            k in shipped and _agrees(v, shipped[k]) for k, v in excerpt.items()
        )
    if isinstance(excerpt, list) and excerpt and all(isinstance(e, dict) for e in excerpt):
        return (
            isinstance(shipped, list)
            and len(excerpt) <= len(shipped)
            and all(_agrees(e, s) for e, s in zip(excerpt, shipped))
        )
    return excerpt == shipped


def _shipped_name(body: str) -> str | None:
    from nestdsl.spec.shipped import shipped_names

    named = re.search(r"^name: ([\w-]+)", body, re.M)
    return named.group(1) if named and named.group(1) in shipped_names() else None


SPEC_EXCERPTS = [
    pytest.param(path, line, body, id=f"{path.relative_to(ROOT)}:{line}")
    for path, language, line, body in ALL_BLOCKS
    if language == "yaml" and _shipped_name(body)
]


@pytest.mark.parametrize("path,line,body", SPEC_EXCERPTS)
def test_a_shipped_spec_shown_in_the_docs_is_the_shipped_spec(path, line, body):
    """A whole spec in the docs that bears a shipped spec's name shows that spec's values, so an
    example cannot keep a gate or an initialization the spec has since dropped."""
    import yaml

    from nestdsl.spec.shipped import read_spec

    name = _shipped_name(body)
    shipped = yaml.safe_load(read_spec(name)[0])
    assert _agrees(yaml.safe_load(body), shipped), (
        f"{path.name}:{line} differs from specs/{name}.yaml"
    )


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A scratch folder with the runs the python blocks load, trained for a few updates."""
    import torch

    from nestdsl.train import TrainConfig, spec_source, train

    root = tmp_path_factory.mktemp("docs")
    small = TrainConfig(steps=2, batch_size=2, seq_len=16, eval_batches=1, device="cpu")
    threads = torch.get_num_threads()
    for spec, out in (("titans-lmm", "runs/titans-lmm"),):
        train(spec_source(spec, ["dims.n_layers=1"]), small, root / out, progress=False)
    torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("path,language,line,body", of("python"))
def test_python_blocks_run(path, language, line, body, trained_runs, monkeypatch, capsys):
    monkeypatch.chdir(trained_runs)
    exec(compile(body, f"{path.name}:{line}", "exec"), {"__name__": "__docs__"})  # noqa: S102


EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_spec_compiles_and_runs(path):
    model = nestdsl.compile(nestdsl.load(path))
    out = model(torch.randint(0, 256, (1, 32)))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape[:2] == (1, 32) and torch.isfinite(logits).all()


def test_the_mac_example_changes_only_what_its_writes_read():
    def nodes(spec):
        return spec.model_dump(mode="json")["blocks"][0]["nodes"]

    shipped = nestdsl.load("titans-mac").spec
    example = nestdsl.load(ROOT / "docs" / "examples" / "titans-mac-input-write.yaml").spec
    a, b = nodes(shipped), nodes(example)
    changed = {n for n in a if a[n] != b[n]}
    assert changed == {"km", "vm"} and set(a) == set(b)
    assert [(a[n]["in_"], b[n]["in_"]) for n in ("km", "vm")] == [("y", "h")] * 2
    rest = {k: v for k, v in shipped.model_dump(mode="json").items() if k not in ("blocks", "name", "description")}
    assert rest == {k: v for k, v in example.model_dump(mode="json").items()
                    if k not in ("blocks", "name", "description")}
