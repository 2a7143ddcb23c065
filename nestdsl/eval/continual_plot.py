"""The `continual` task's figure: the matrix R as a heat map and each domain's bpb over stages.

Left: R[i][j], the held-out bits per byte on domain j (columns) after training on domain i
(rows, in training order), each cell written out; the diagonal is each domain just after its
own stage, and what lies below it in a column is that domain being forgotten (or helped).
Right: one line per domain, its bpb from the untrained model (stage 0) through every stage, with
a marker on the stage that trained it, so a rise after the marker is forgetting.
Written with matplotlib's Agg canvas (no pyplot state, no display needed) and atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nestdsl.eval.plots import save_png


def continual_figure(
    r: Sequence[Sequence[float]], baseline: Sequence[float], labels: Sequence[str], title: str = ""
):
    """The figure as a matplotlib Figure (see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = len(labels)
    figure = Figure(figsize=(6 + 1.1 * t, 3.2 + 0.5 * t), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    heat, lines = figure.subplots(1, 2, width_ratios=(1, 1.2))
    image = heat.imshow(r, cmap="viridis_r", aspect="auto")  # darker: higher bpb (worse)
    figure.colorbar(image, ax=heat, label="bits per byte", shrink=0.85)
    heat.set_xticks(range(t), labels, rotation=30, ha="right")
    heat.set_yticks(range(len(r)), labels[: len(r)])
    heat.set_xlabel("scored on")
    heat.set_ylabel("after training on")
    middle = (min(map(min, r)) + max(map(max, r))) / 2 if r else 0.0
    for i, row in enumerate(r):
        for j, value in enumerate(row):
            color = "white" if value > middle else "black"
            heat.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    heat.set_title("R: held-out bpb")
    stages = list(range(len(r) + 1))
    for j, label in enumerate(labels):
        values = [baseline[j], *(row[j] for row in r)]  # stage 0 is the untrained model
        (line,) = lines.plot(stages, values, marker="o", markersize=3, label=label)
        if j < len(r):
            lines.plot([j + 1], [r[j][j]], marker="*", markersize=11, color=line.get_color())
    lines.set_xticks(stages, ["init", *labels[: len(r)]], rotation=30, ha="right")
    lines.set_xlabel("after training on (a star: the domain's own stage)")
    lines.set_ylabel("held-out bits per byte")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    lines.set_title("each domain over the stages")
    if title:
        figure.suptitle(title)
    return figure


def plot_continual(
    r: Sequence[Sequence[float]],
    baseline: Sequence[float],
    labels: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Write the figure as a PNG at `path` (folders created); UserError if impossible."""
    return save_png(continual_figure(r, baseline, labels, title), path)
