"""The report of a comparison: report.md for people, report.json for programs, the figures.

report.md reads without the code: what was compared and how (data, budget, sizes and how they
were matched, seeds), one table (a row per spec, a column per measured quantity as mean ±
sample standard deviation over seeds, the winner of each column in bold, with a note when the
win is within that spread), what each column measures, the figures, the command that
reproduces it, and where each run folder is. report.json holds the same numbers, per seed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from nestdsl.compare.plots import plot_loss_curves, plot_recall_maps, validation_curves
from nestdsl.compare.runs import run_dir
from nestdsl.compare.summary import Column, build_columns
from nestdsl.train.checkpoint import write_file_atomically

DESCRIPTIONS = {
    "parameters": "every parameter of the compiled model, as `nestdsl show` counts them",
    "tokens/s": "training throughput: tokens trained / training seconds (the run's own clock, "
    "with its few validation passes, and time spent waiting for a shared CPU counts against it)",
    "bpb": "bits per byte on the held-out tail of the corpus (`nestdsl eval RUN --task bpb`): "
    "lower is better, a uniform guess scores 8",
    "recall": "Zoology MQAR accuracy, trained from scratch at the grid point's size "
    "(`nestdsl eval SPEC --task recall`): higher is better",
    "needle": "needle-in-a-haystack accuracy at a multiple of the training length, trained "
    "from scratch (`nestdsl eval SPEC --task needle`): higher is better",
    "in-context": "the in-context task's bits per byte over long held-out streams, state "
    "carried (`nestdsl eval RUN --task in-context`): lower is better",
    "continual": "the continual task over the text domains, trained from scratch "
    "(`nestdsl eval SPEC --task continual`)",
}


def _format(value: float | None, column: str) -> str:
    if value is None:
        return "n/a"
    if column == "parameters":
        return f"{value:,.0f}"
    if column == "tokens/s":
        return f"{value:,.0f}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _cell(column: Column, label: str, seeds: int, best: str | None) -> str:
    mean = column.mean(label)
    text = _format(mean, column.name)
    if mean is not None and seeds > 1 and column.name != "parameters":
        text += f" ± {_format(column.spread(label), column.name)}"
    return f"**{text}**" if label == best else text


def _describe(name: str) -> str:
    for key, text in DESCRIPTIONS.items():
        if name == key or name.startswith(key + " "):
            return text
    return "the task's headline metric (see docs/evaluation.md)"


def table(columns: list[Column], labels: list[str], seeds: int) -> list[str]:
    arrows = {"higher": " ↑", "lower": " ↓", None: ""}
    head = ["spec", *(c.name + arrows[c.better] for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(columns)]
    winners = {c.name: c.winner() for c in columns}
    for label in labels:
        cells = [_cell(c, label, seeds, winners[c.name][0]) for c in columns]
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    won = []
    for c in columns:
        best, close = winners[c.name]
        won.append("" if best is None else f"`{best}`" + (" (within spread)" if close else ""))
    lines.append("| best | " + " | ".join(won) + " |")
    return lines


def command_line(settings: dict) -> str:
    parts = ["nestdsl", "compare", *settings["specs"], "--budget", str(settings["budget"])]
    if settings["match_params"]:
        parts.append("--match-params")
        if settings["params"]:
            parts += ["--params", str(settings["params"])]
        if settings["tolerance"] != 0.05:
            parts += ["--param-tolerance", str(settings["tolerance"])]
    parts += ["--seeds", ",".join(map(str, settings["seeds"]))]
    parts += ["--tasks", ",".join(settings["tasks"])]
    for task, options in settings["task_options"].items():
        for flag, value in options.items():
            for item in value if isinstance(value, list) else [value]:
                parts += ["--task-set", f"{task}.{flag}={item}"]
    parts += ["--batch-size", str(settings["batch_size"]), "--seq-len", str(settings["seq_len"])]
    if settings["data"]:
        parts += ["--data", settings["data"]]
    for item in settings["overrides"]:
        parts += ["--set", item]
    if settings["eval_every"]:
        parts += ["--eval-every", str(settings["eval_every"])]
    if settings["eval_batches"] != 4:
        parts += ["--eval-batches", str(settings["eval_batches"])]
    parts += ["--device", settings["device"]]
    return shlex.join(parts)


def write_report(outcome: dict, out: Path) -> dict:
    """Write report.md, report.json and the figures under `out`; the paths written."""
    settings, entries = outcome["settings"], outcome["entries"]
    seeds = settings["seeds"]
    labels = [e.label for e in entries]
    columns = build_columns(outcome, out)
    per_step = settings["batch_size"] * settings["seq_len"]
    curves = {
        e.label: validation_curves([run_dir(out, e, s) for s in seeds], per_step) for e in entries
    }
    written = {"loss_curves": plot_loss_curves(
        curves, out / "loss_curves.png",
        f"validation bits per byte, {settings['tokens']:,} training tokens",
    )}  # fmt: skip
    if "recall" in settings["tasks"]:
        maps: dict[str, dict[tuple[int, int], float]] = {}
        for e in entries:
            cells: dict[tuple[int, int], list[float]] = {}
            for s in seeds:
                for p in outcome["results"][e.label, s]["recall"]["points"]:
                    cells.setdefault((p["L"], p["N"]), []).append(p["accuracy"])
            maps[e.label] = {k: sum(v) / len(v) for k, v in cells.items()}
        written["recall"] = plot_recall_maps(maps, out / "recall.png")
    body = {
        "settings": settings,
        "specs": [
            {
                "label": e.label,
                "spec": e.spec,
                "parameters": e.params,
                "overrides": list(e.overrides),
                "resize": list(e.resize),
                "runs": {str(s): str(run_dir(out, e, s).relative_to(out)) for s in seeds},
            }
            for e in entries
        ],  # fmt: skip
        "columns": [
            {
                "name": c.name,
                "better": c.better,
                "winner": c.winner()[0],
                "within_spread": c.winner()[1],
                "values": {
                    k: {"per_seed": v, "mean": c.mean(k), "spread": c.spread(k)}
                    for k, v in c.values.items()
                },
            }
            for c in columns
        ],  # fmt: skip
        "results": {f"{label}/seed-{s}": r for (label, s), r in outcome["results"].items()},
    }
    write_file_atomically(out / "report.json", (json.dumps(body, indent=1) + "\n").encode())
    md = markdown(outcome, columns, labels, written, out)
    write_file_atomically(out / "report.md", md.encode())
    return {"report.md": out / "report.md", "report.json": out / "report.json", **written}


def task_figures(outcome: dict, task: str, out: Path) -> list[tuple[str, str]]:
    """(spec, path relative to `out`) of the figure a task drew beside its result (needle's
    heat map, in-context's curve, continual's matrix), for each spec at the first seed."""
    if task in ("bpb", "recall"):
        return []
    shown = []
    for e in outcome["entries"]:
        result = outcome["results"][e.label, outcome["settings"]["seeds"][0]][task]
        path = result.get("heatmap") or result.get("plot")
        if isinstance(path, str) and Path(path).is_file():
            try:
                shown.append((e.label, str(Path(path).resolve().relative_to(out.resolve()))))
            except ValueError:
                shown.append((e.label, str(path)))
    return shown


def markdown(outcome: dict, columns: list[Column], labels: list[str], written, out) -> str:
    settings, entries = outcome["settings"], outcome["entries"]
    seeds = settings["seeds"]
    data = settings["data"] or "the embedded Shakespeare (nestdsl's default corpus)"
    lines = [
        f"# Comparison: {', '.join(labels)}",
        "",
        f"Every spec was trained on {data} for {settings['tokens']:,} tokens "
        f"({settings['steps']} steps of {settings['batch_size']} sequences x "
        f"{settings['seq_len']} bytes), once per seed ({', '.join(map(str, seeds))}), with its "
        "own outer optimizer and learning rate, a warm-up then cosine schedule, and gradients "
        "clipped at 1.0 (`nestdsl train`'s loop).",
        "",
    ]
    if settings["match_params"]:
        source = (
            f"--params {settings['params']:,}" if settings["params"] else f"`{labels[0]}`'s count"
        )
        lines += [
            f"Sizes were matched to {settings['target_params']:,} parameters ({source}) within "
            f"{settings['tolerance']:.0%} by changing each spec's width only: d_model, with "
            "d_head = d_model / n_heads and d_ff keeping its ratio to d_model; depth, heads and "
            "vocabulary are the spec's own.",
            "",
        ]
    spread = "mean ± sample standard deviation over the seeds" if len(seeds) > 1 else "one seed"
    lines += [
        f"Each cell is the {spread}; the best of each column is in bold, and the last row names "
        'it ("within spread": the runner-up is closer than the two spreads added, so these '
        "seeds cannot tell the two apart).",
        "",
        *table(columns, labels, len(seeds)),
        "",
        "What the columns measure:",
        "",
    ]
    lines += [f"- **{c.name}**: {_describe(c.name)}." for c in columns]
    lines += ["", "## Sizes", "", "| spec | parameters | overrides |", "|---|---:|---|"]
    for e in entries:
        shown = " ".join(f"`{o}`" for o in e.overrides) or "none (as shipped)"
        lines.append(f"| `{e.label}` | {e.params:,} | {shown} |")
    lines += ["", "## Figures", "", "Validation bits per byte during training (mean over seeds, "
              "band from the lowest to the highest seed):", "",
              f"![loss curves]({written['loss_curves'].name})", ""]  # fmt: skip
    if "recall" in written:
        lines += ["MQAR recall accuracy by sequence length and pairs (mean over seeds):", "",
                  f"![recall]({written['recall'].name})", ""]  # fmt: skip
    for task in settings["tasks"]:
        shown = task_figures(outcome, task, out)
        if shown:
            lines += [f"`{task}` at seed {seeds[0]} (the task's own figure, in each run's eval/):",
                      "", *(f"![{task} {label}]({path})" for label, path in shown), ""]  # fmt: skip
    lines += ["## Settings", "", "```", command_line(settings), "```", "",
              "Run folders (each an ordinary `nestdsl train` run: `nestdsl eval`, `generate` and "
              "`train --resume` work on it; task results in its `eval/`):", ""]  # fmt: skip
    for e in entries:
        lines.append(f"- `{e.label}`: " + ", ".join(
            f"`{run_dir(out, e, s).relative_to(out)}`" for s in seeds))  # fmt: skip
    return "\n".join(lines) + "\n"
