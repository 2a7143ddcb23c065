"""`nestdsl viz`: every shipped spec draws; formats by extension; user mistakes are one line."""

from __future__ import annotations

import argparse
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import nestdsl
from nestdsl import cli
from nestdsl.commands import viz
from nestdsl.errors import SpecError, UserError

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nestdsl viz")
    viz.add_arguments(parser)
    return parser.parse_args(list(argv))


def draw(capsys, *argv: str) -> int:
    code = viz.run(args(*argv))
    out, _ = capsys.readouterr()
    assert out.startswith("wrote ")
    return code


def svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()  # well-formed XML, or this raises
    assert root.tag.endswith("svg")
    return " ".join(t.strip() for t in root.itertext() if t.strip())


@needs_dot
@pytest.mark.parametrize("name", nestdsl.shipped_names())
def test_every_shipped_spec_draws_as_svg(name, tmp_path, capsys):
    out = tmp_path / f"{name}.svg"
    assert draw(capsys, name, "-o", str(out)) == 0
    text = svg_text(out)
    spec = nestdsl.load(name).spec
    for level in spec.levels:
        assert level in text, level
    for memory in spec.memories:
        assert memory in text, memory
    assert "legend" in text
    for kind in ("context flow", "generation", "read", "nesting", "trains"):
        assert kind in text


@needs_dot
def test_hope_svg_shows_periods_and_memory_labels(tmp_path, capsys):
    out = tmp_path / "hope.svg"
    draw(capsys, "hope", "-o", str(out))
    text = svg_text(out)
    n_ops = len(nestdsl.load("hope").spec.blocks[0].nodes)
    for label in ("memory · every 8", "proj · every 16", "cms_3 · every 64",
                  "pretrain · every optimizer step", "mlp 4 heads x 32, depth 2",
                  "l2 · dgd · l2 decay", "block layer", f"× 2 · {n_ops} ops"):  # fmt: skip
        assert label in text, label


@needs_dot
@pytest.mark.parametrize("name, label", [
    ("atlas", "l2 over 8 tokens · muon · l2 decay"),       # the Omega window
    ("titans-mag", "cache 4 heads x 32, window 32 + 4 sinks"),
    ("linear-attention", "dot, normalized · gd"),
    ("yaad", "huber (norm) · gd · l2 decay"),
])  # fmt: skip
def test_memory_labels_show_the_objective_options(name, label, tmp_path, capsys):
    out = tmp_path / f"{name}.svg"
    draw(capsys, name, "-o", str(out))
    assert label in svg_text(out)


def test_dot_output_is_graphviz_source(tmp_path, capsys):
    out = tmp_path / "hope.dot"
    draw(capsys, "hope", "-o", str(out))
    source = out.read_text()
    assert "digraph" in source and "cluster_legend" in source


@needs_dot
def test_png_and_pdf_output(tmp_path, capsys):
    png, pdf = tmp_path / "hope.png", tmp_path / "titans.PDF"
    draw(capsys, "hope", "-o", str(png))
    draw(capsys, "titans-mac", "-o", str(pdf))
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert pdf.read_bytes().startswith(b"%PDF")


def test_unknown_extension_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError) as err:
        viz.run(args("hope", "-o", str(tmp_path / "hope.jpg")))
    message = str(err.value)
    assert "`.jpg`" in message
    for ext in (".svg", ".png", ".pdf", ".dot"):
        assert ext in message
    with pytest.raises(UserError, match="no extension"):
        viz.run(args("hope", "-o", str(tmp_path / "hope")))
    with pytest.raises(UserError, match=r"\.png, \.svg, \.pdf"):
        viz.run(args("hope", "--timeline", "-o", str(tmp_path / "hope.dot")))
    assert list(tmp_path.iterdir()) == []


def test_missing_dot_says_to_install_graphviz(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    with pytest.raises(UserError, match="install Graphviz"):
        viz.run(args("hope", "-o", str(tmp_path / "hope.svg")))
    draw(capsys, "hope", "-o", str(tmp_path / "hope.dot"))  # the source needs no `dot`


@pytest.mark.parametrize("name", ["hope", "transformer"])
def test_timeline_png(name, tmp_path, capsys):
    out = tmp_path / f"{name}-timeline.png"
    assert draw(capsys, name, "--timeline", "-o", str(out)) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_timeline_window_flag(tmp_path, capsys):
    out = tmp_path / "t.svg"
    draw(capsys, "titans-mac", "--timeline", "--tokens", "40", "-o", str(out))
    svg_text(out)  # valid SVG (matplotlib draws its text as paths)
    with pytest.raises(UserError, match="positive"):
        viz.run(args("hope", "--timeline", "--tokens", "0", "-o", str(out)))
    with pytest.raises(UserError, match="--timeline"):
        viz.run(args("hope", "--tokens", "64", "-o", str(tmp_path / "g.dot")))


def test_default_output_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    draw(capsys, "transformer", "--timeline")
    assert (tmp_path / "transformer-timeline.png").read_bytes().startswith(PNG_MAGIC)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        viz.run(args("hope", "-o", str(tmp_path / "nope" / "hope.dot")))


def broken_spec(tmp_path: Path) -> Path:
    text = (REPO / "specs" / "hope.yaml").read_text()
    bad = tmp_path / "broken.yaml"
    bad.write_text(text.replace("    level: memory\n", "    level: memroy\n", 1))
    return bad


def test_spec_error_is_a_spec_error(tmp_path):
    bad = broken_spec(tmp_path)
    with pytest.raises(SpecError) as err:
        viz.run(args(str(bad), "-o", str(tmp_path / "x.svg")))
    assert "unknown level `memroy`" in str(err.value)
    assert not (tmp_path / "x.svg").exists()


def test_spec_error_through_the_cli_is_one_message(tmp_path, monkeypatch, capsys):
    if "viz" not in cli.COMMANDS:  # until the command is registered in nestdsl/cli.py
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "viz"])
    bad = broken_spec(tmp_path)
    code = cli.main(["viz", str(bad), "-o", str(tmp_path / "x.svg")])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert "Traceback" not in err
    assert err.startswith("nestdsl viz: error: 1 error in spec")
    assert f"{bad}:" in err and "error[dangling-ref]" in err


@needs_dot
def test_expand_draws_the_block_op_by_op(tmp_path, capsys):
    out = tmp_path / "hope-layer.svg"
    assert draw(capsys, "hope", "--expand", "layer", "-o", str(out)) == 0
    text = svg_text(out)
    for op in nestdsl.load("hope").spec.blocks[0].nodes:
        assert op in text, op
    assert "read M_memory @ read→write" in text and "block output" in text


def test_expand_mistakes_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no block named `lyr`; its blocks are `layer`"):
        viz.run(args("hope", "--expand", "lyr", "-o", str(tmp_path / "x.dot")))
    with pytest.raises(UserError, match="--timeline"):
        viz.run(args("hope", "--expand", "layer", "--timeline", "-o", str(tmp_path / "t.png")))
    assert list(tmp_path.iterdir()) == []
