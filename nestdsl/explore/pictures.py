"""Pictures of a search: score against cost with the Pareto front, and the level graphs of the
top candidates beside their base (drawn by `nestdsl.viz`, the pictures of `nestdsl viz`).

`pareto.png` has two panels, score against parameters and score against training seconds per
million tokens; a candidate is on the front when no other is at least as good in score and in
that cost and better in one. `graphs/` holds one SVG per base and per top candidate, and
`graphs.md` shows each top candidate beside its base.
"""

from __future__ import annotations

from pathlib import Path

from nestdsl.explore.leaderboard import ranked


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other dominates (both coordinates lower is better)."""
    front = []
    for i, (c, s) in enumerate(points):
        dominated = any((c2 <= c and s2 <= s) and (c2 < c or s2 < s) for j, (c2, s2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def draw_pareto(out: Path, state) -> Path | None:
    rows = [r for r in ranked(state) if r.get("score") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sign = 1 if state.settings.objective == "bpb" else -1
    costs = {
        "parameters": [r.get("params", 0) for r in rows],
        "seconds per million training tokens": [1e6 / r["tokens_per_s"] if r.get("tokens_per_s") else None
                                                for r in rows],  # fmt: skip
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (label, cost) in zip(axes, costs.items()):
        keep = [i for i, c in enumerate(cost) if c is not None]
        pts = [(cost[i], sign * rows[i]["score"]) for i in keep]
        front = {keep[i] for i in pareto_front(pts)}
        for i in keep:
            r = rows[i]
            base = r["parent"] is None
            ax.scatter(cost[i], r["score"], s=60 if base else 28, marker="s" if base else "o",
                       color="tab:red" if i in front else "tab:blue", zorder=3)  # fmt: skip
            ax.annotate(r["id"], (cost[i], r["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        line = sorted((cost[i], rows[i]["score"]) for i in front)
        if line:
            ax.step([c for c, _ in line], [s for _, s in line], where="post", color="tab:red", lw=1,
                    label="Pareto front")  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("bits per byte (lower is better)" if sign > 0 else "recall (higher is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{', '.join(state.settings.bases)}: {len(rows)} candidates (squares: bases)")
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_graphs(out: Path, state, top: int = 3) -> Path | None:
    """SVG level graphs of every base and the `top` best mutants, and graphs.md pairing them."""
    import nestdsl
    from nestdsl.viz import level_graph

    rows = [r for r in ranked(state) if r.get("score") is not None]
    bases = {r["base"]: r for r in state.candidates if r["parent"] is None}
    best = [r for r in rows if r["parent"] is not None][:top]
    folder = out / "graphs"
    folder.mkdir(parents=True, exist_ok=True)
    drawn = {}
    for r in [*bases.values(), *best]:
        try:
            graph = level_graph(nestdsl.load(str(out / r["file"])))
            graph.render(str(folder / r["id"]), format="svg", cleanup=True)
            drawn[r["id"]] = f"graphs/{r['id']}.svg"
        except Exception as err:  # noqa: BLE001 - no graphviz binary: the leaderboard still stands
            drawn[r["id"]] = None
            print(f"explore: level graph of {r['id']} not drawn: {err}")
    lines = ["# Level graphs: the top candidates beside their base", ""]
    for r in best:
        b = bases.get(r["base"])
        lines += [f"## {r['id']} (score {r['score']:.4f}) vs {b['id']} {r['base']} "
                  f"(score {b.get('score') or float('nan'):.4f})", "",
                  "; ".join(r["mutations"]), "",
                  "| base | candidate |", "|---|---|",
                  f"| ![{b['id']}]({drawn.get(b['id'])}) | ![{r['id']}]({drawn.get(r['id'])}) |", ""]  # fmt: skip
    path = out / "graphs.md"
    path.write_text("\n".join(lines) + "\n")
    return path
