"""The leaderboard of a search: `leaderboard.json` (everything, ranked) and `leaderboard.md`.

Ranked by the objective (bits per byte: lower first; recall: higher first); under successive
halving a candidate that reached a later rung ranks above every one that stopped earlier, since
its score comes from longer training. Failed candidates rank last. Cost columns are the
parameter count the candidate was trained at and its training tokens/s on this machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TIMING = ("tokens_per_s", "train_s", "wall_s")  # what differs between two runs of one search


def ranked(state) -> list[dict]:
    objective = state.settings.objective

    def key(c):
        score = c.get("score")
        if score is None:
            return (1, 0, math.inf, c["id"])
        return (0, -c.get("rung", 0), score if objective == "bpb" else -score, c["id"])

    return sorted(state.candidates, key=key)


def write_leaderboard(out: Path, state) -> None:
    rows = ranked(state)
    s = state.settings
    data = {
        "objective": s.objective,
        "better": "lower" if s.objective == "bpb" else "higher",
        "strategy": s.strategy,
        "seed": s.seed,
        "bases": s.bases,
        "budget": s.budget,
        "finished": state.finished,
        "elapsed_s": round(state.elapsed_s, 1),
        "tokens": sum(c.get("tokens", 0) for c in state.candidates),
        "rejections": state.rejections.as_dict(),
        "ranking": [{"rank": i + 1, **row} for i, row in enumerate(rows)],
    }
    (out / "leaderboard.json").write_text(json.dumps(data, indent=1))
    (out / "leaderboard.md").write_text(markdown(data))


def markdown(data: dict) -> str:
    unit = "bits/byte" if data["objective"] == "bpb" else "recall"
    lines = [
        f"# Leaderboard: {', '.join(data['bases'])} ({data['strategy']}, seed {data['seed']})",
        "",
        f"Objective: {unit}, {data['better']} is better. Budget {data['budget']}; "
        f"{len(data['ranking'])} candidates, {data['tokens']:,} training tokens, "
        f"{data['elapsed_s'] / 60:.1f} min; {data['finished'] or 'running'}.",
        "",
        "| rank | candidate | base | score | vs base (same steps) | params | tokens/s | steps | mutations |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    bases = {r["base"]: r for r in data["ranking"] if r["parent"] is None}
    for r in data["ranking"]:
        score = r.get("score")
        # Against the base at the same training length: under halving, the candidate's score at
        # the rung where the base stopped.
        base = bases.get(r["base"], {})
        same = (r.get("scores") or {}).get(str(base.get("rung", 0)), score)
        ok = same is not None and base.get("score") is not None
        delta = f"{same - base['score']:+.4f}" if ok else ""
        shown = f"{score:.4f}" if score is not None else f"failed: {r.get('error', '?')[:60]}"
        muts = "; ".join(r["mutations"]) or "(base)"
        if r.get("matching", "").startswith("unmatched"):
            muts += f" [{r['matching'][:60]}]"
        elif r.get("overrides"):
            muts += f" [resized: {' '.join(r['overrides'])}]"
        rate = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else ""
        lines.append(f"| {r['rank']} | [{r['id']}]({r['file']}) | {r['base']} | {shown} | {delta} | "
                     f"{r.get('params', 0):,} | {rate} | {r.get('steps', '')} | {muts} |")  # fmt: skip
    rej = data["rejections"]
    lines += ["", "Proposals dropped before training: "
              f"{sum(rej['invalid'].values())} invalid, {rej['duplicates']} duplicates "
              "(same lowered IR up to names)."]  # fmt: skip
    if rej["invalid"]:
        lines.append("Invalid, by the first diagnostic: " + ", ".join(
            f"`{k}` {v}" for k, v in sorted(rej["invalid"].items(), key=lambda kv: -kv[1])) + ".")  # fmt: skip
    if rej["invalid_by_operator"]:
        lines.append("Operators in invalid chains: " + ", ".join(
            f"{k} {v}" for k, v in sorted(rej["invalid_by_operator"].items(), key=lambda kv: -kv[1])) + ".")  # fmt: skip
    return "\n".join(lines) + "\n"
