"""Figures of evaluation results: heat maps (needle) and curves over position (in-context).

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no global state,
no display needed) and written as PNG atomically beside the task's JSON result, so a reader of
a result folder never meets half a picture.
"""

from __future__ import annotations

import io
from pathlib import Path

from nestdsl.errors import UserError
from nestdsl.train.checkpoint import write_file_atomically


def save_png(figure, path: str | Path) -> Path:
    """Write `figure` to `path` as PNG (folders created); UserError when that is impossible."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, buffer.getvalue())
    except OSError as err:
        raise UserError(f"cannot write the figure {path}: {err.strerror or err}") from None
    return path


def heatmap_figure(
    panels: dict[str, list[list[float]]], rows: list[str], columns: list[str], title: str,
    row_name: str, column_name: str,
):  # fmt: skip
    """One heat map per panel (values in [0, 1], `rows` x `columns`), each cell annotated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 1.2 + 0.55 * len(columns)
    size = (max(3.0, width) * len(panels) + 1.0, 0.45 * len(rows) + 2.4)
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (name, values) in zip(axes, panels.items(), strict=True):
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(column_name)
        ax.set_title(name)
        for i, line in enumerate(values):
            for j, v in enumerate(line):
                # Dark text on the bright end of viridis, light text on the dark end.
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 0.6 else "white")  # fmt: skip
    axes[0].set_ylabel(row_name)
    figure.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02, label="accuracy")
    figure.suptitle(title)
    return figure


def curve_figure(
    curves: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str,
    marks: dict[str, float] | None = None,
):  # fmt: skip
    """Lines `label -> (x, y)` on a log x axis, with markers at the points; `marks` are
    labelled dashed vertical lines (e.g. the length a model was trained at)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for label, (x, y) in curves.items():
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, label=label)
    for label, x in (marks or {}).items():
        ax.axvline(x, color="gray", linestyle="--", linewidth=0.8, label=label)
    ax.set_xscale("log", base=2)
    # Counts of bytes read the way a reader says them (1,024, not 2^10).
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if len(curves) + len(marks or {}) > 1:
        ax.legend()
    ax.set_title(title)
    figure.tight_layout()
    return figure
