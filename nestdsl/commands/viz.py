"""`nestdsl viz SPEC -o FILE`: draw a spec's level graph, or (`--timeline`) its update timeline.

`--expand BLOCK` draws one block op by op inside the level graph (nestdsl.viz.expand).

The level graph is drawn by Graphviz's `dot`; the format follows the file's extension (.svg,
.png, .pdf, or .dot for the Graphviz source, which needs no `dot`). The timeline is a matplotlib
figure (.png, .svg or .pdf).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nestdsl.errors import UserError
from nestdsl.spec.validate import load

HELP = "draw a spec's level graph (graphviz) or, with --timeline, when each level updates"
EXAMPLE = (
    "nestdsl viz hope -o hope.svg   |   nestdsl viz hope --expand layer -o layer.svg   |   "
    "nestdsl viz hope --timeline -o hope-timeline.png"
)

GRAPH_FORMATS = (".svg", ".png", ".pdf", ".dot")
TIMELINE_FORMATS = (".png", ".svg", ".pdf")
INSTALL_HINT = ("install Graphviz (Debian/Ubuntu: `apt install graphviz`, macOS: `brew install "
                "graphviz`), or write the Graphviz source with `-o FILE.dot`")  # fmt: skip


def add_arguments(parser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="shipped spec name or YAML path")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="the picture to write; its extension picks the format: "
                        f"{', '.join(GRAPH_FORMATS)} (timeline: {', '.join(TIMELINE_FORMATS)}); "
                        "default: SPEC_NAME.svg, or SPEC_NAME-timeline.png with --timeline")  # fmt: skip
    parser.add_argument("--timeline", action="store_true",
                        help="plot when each level's memories update and reset over a window of "
                        "tokens, instead of the level graph")  # fmt: skip
    parser.add_argument("--tokens", type=int, metavar="N",
                        help="timeline window in tokens (default: 4 x the slowest in-context "
                        "period, between 32 and 1024)")  # fmt: skip
    parser.add_argument("--expand", metavar="BLOCK",
                        help="draw this block op by op (its data flow, which ops read and feed "
                        "each memory) instead of as one node")  # fmt: skip
    parser.add_argument("--no-legend", dest="legend", action="store_false",
                        help="leave the legend out of the level graph")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec value, e.g. dims.d_model=64")  # fmt: skip


def run(args) -> int:
    timeline = getattr(args, "timeline", False)
    tokens = getattr(args, "tokens", None)
    if tokens is not None and not timeline:
        raise UserError("--tokens sets the window of the timeline: use it with --timeline")
    expand = getattr(args, "expand", None)
    if expand is not None and timeline:
        raise UserError("--expand draws a block of the level graph: it does not apply to "
                        "--timeline")  # fmt: skip
    if tokens is not None and tokens <= 0:
        raise UserError(f"--tokens must be a positive number of tokens, not {tokens}")
    output = Path(args.output) if getattr(args, "output", None) else None
    if output is not None:
        _check_extension(output, timeline)
    checked = load(args.spec, getattr(args, "overrides", None) or [])
    if output is None:
        output = Path(
            f"{checked.spec.name}-timeline.png" if timeline else f"{checked.spec.name}.svg"
        )
    if not output.parent.is_dir():
        raise UserError(f"cannot write {output}: no such directory {output.parent}")
    if timeline:
        _write_timeline(checked, output, tokens)
    else:
        _write_graph(checked, output, getattr(args, "legend", True), expand)
    print(f"wrote {output}")
    return 0


def _check_extension(output: Path, timeline: bool) -> None:
    valid = TIMELINE_FORMATS if timeline else GRAPH_FORMATS
    ext = output.suffix.lower()
    if ext in valid:
        return
    what = "the timeline" if timeline else "the level graph"
    got = f"`{ext}`" if ext else "no extension"
    extra = " (.dot is for the level graph, not the timeline)" if timeline and ext == ".dot" else ""
    raise UserError(f"cannot write {what} as {output}: {got} is not a known format{extra}; "
                    f"use one of {', '.join(valid)}")  # fmt: skip


def _write(output: Path, data: bytes) -> None:
    try:
        output.write_bytes(data)
    except OSError as err:
        raise UserError(f"cannot write {output}: {err.strerror}") from None


def _write_graph(checked, output: Path, legend: bool, expand: str | None) -> None:
    from nestdsl.viz.render import level_graph

    dot = level_graph(checked, legend=legend, expand=expand)
    fmt = output.suffix.lower()[1:]
    if fmt == "dot":
        _write(output, dot.source.encode())
        return
    if shutil.which("dot") is None:
        raise UserError(f"cannot draw {output}: the Graphviz program `dot` is not on PATH; "
                        f"{INSTALL_HINT}")  # fmt: skip
    import graphviz

    try:
        data = dot.pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        raise UserError(f"cannot draw {output}: the Graphviz program `dot` did not run; "
                        f"{INSTALL_HINT}") from None  # fmt: skip
    except graphviz.CalledProcessError as err:
        message = (err.stderr or b"").decode(errors="replace").strip().splitlines()
        raise UserError(f"Graphviz `dot` failed to draw {output}: "
                        f"{message[-1] if message else err}") from None  # fmt: skip
    _write(output, data)


def _write_timeline(checked, output: Path, tokens: int | None) -> None:
    from nestdsl.viz.timeline import timeline_figure

    figure = timeline_figure(checked, tokens)
    try:
        figure.savefig(output, format=output.suffix.lower()[1:])
    except OSError as err:
        raise UserError(f"cannot write {output}: {err.strerror}") from None
