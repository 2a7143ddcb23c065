"""The figures of a comparison: every spec's validation curve on one plot, recall heat maps.

* `loss_curves.png`: validation bits per byte (the `val` records of each run's metrics.jsonl)
  against training tokens, one line per spec (the mean over seeds) with a band from the lowest
  to the highest seed;
* `recall.png` (when `recall` ran): one heat map per spec of MQAR accuracy over the grid's
  sequence lengths L (rows) and pair counts N (columns), the mean over seeds, each cell
  labelled; a grid with one point is one labelled cell.

Matplotlib's Agg canvas draws them (no display, no pyplot state), written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

from nestdsl.train.checkpoint import write_file_atomically
from nestdsl.train.metrics import read_metrics


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    write_file_atomically(path, buffer.getvalue())
    return path


def validation_curves(folders: list[Path], tokens_per_step: int) -> dict[int, list[float]]:
    """Tokens -> validation bpb per seed (only the steps every seed evaluated)."""
    per_seed = []
    for folder in folders:
        records = read_metrics(folder / "metrics.jsonl")
        per_seed.append({r["step"]: r["bpb"] for r in records if r.get("kind") == "val"})
    steps = set.intersection(*(set(c) for c in per_seed)) if per_seed else set()
    return {s * tokens_per_step: [c[s] for c in per_seed] for s in sorted(steps)}


def plot_loss_curves(curves: dict[str, dict[int, list[float]]], path: Path, title: str) -> Path:
    """`curves`: spec label -> tokens -> bpb per seed."""
    figure = _figure(7, 4.5)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        if not curve:
            continue
        tokens = list(curve)
        means = [sum(v) / len(v) for v in curve.values()]
        line = axes.plot(tokens, means, label=label, linewidth=1.4)[0]
        if any(len(v) > 1 for v in curve.values()):
            low = [min(v) for v in curve.values()]
            high = [max(v) for v in curve.values()]
            axes.fill_between(tokens, low, high, color=line.get_color(), alpha=0.2)
    axes.set_xlabel("training tokens")
    axes.set_ylabel("validation bits per byte")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_recall_maps(points: dict[str, dict[tuple[int, int], float]], path: Path) -> Path:
    """`points`: spec label -> (L, N) -> mean accuracy. One heat map per spec, shared scale."""
    labels = list(points)
    figure = _figure(3.2 * len(labels) + 1, 3.2)
    for index, label in enumerate(labels):
        cells = points[label]
        lengths = sorted({L for L, _ in cells})
        pairs = sorted({N for _, N in cells})
        grid = [[cells.get((L, N), float("nan")) for N in pairs] for L in lengths]
        axes = figure.add_subplot(1, len(labels), index + 1)
        image = axes.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        axes.set_xticks(range(len(pairs)), [str(n) for n in pairs])
        axes.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        axes.set_xlabel("pairs N")
        if index == 0:
            axes.set_ylabel("sequence length L")
        axes.set_title(label)
        for row, L in enumerate(lengths):
            for col, N in enumerate(pairs):
                value = cells.get((L, N))
                if value is not None:
                    color = "black" if value > 0.6 else "white"
                    axes.text(col, row, f"{value:.2f}", ha="center", va="center", color=color)
    figure.colorbar(image, ax=figure.axes, label="recall accuracy", shrink=0.8)
    return _save(figure, path)
