"""Successive halving for `nestdsl explore --strategy halving` (Jamieson & Talwalkar 2016).

Rung 0 trains n candidates (the bases first) `steps` steps each; rung r keeps the best
ceil(n_{r-1} / eta) of rung r-1 and trains them on, from their checkpoints, to
`steps * eta^r` steps. Every run of the search follows one warmup-cosine schedule as long as
the last rung, so the scores of one rung are read at the same point of the same schedule.

n is fixed once, when the bases are done, from the budget: a rung costs about
n * steps * tokens_per_step * (1 - 1/eta) after the first, so
n = budget / (steps * tokens_per_step * (1 + (rungs - 1)(1 - 1/eta))). A time budget is turned
into tokens with the bases' measured wall time per candidate (so, unlike a token budget, the
number of candidates of a time budget depends on the machine).
"""

from __future__ import annotations

import math

from nestdsl.explore.evaluate import train_and_score


def rung_cost_factor(eta: int, rungs: int) -> float:
    """Total training of a halving search in units of (n candidates x one first rung)."""
    return 1 + (rungs - 1) * (1 - 1 / eta)


def run_halving(search) -> None:
    s, state = search.settings, search.state
    schedule = s.steps * s.eta ** (s.rungs - 1)
    while len(state.candidates) < len(search.bases):
        proposal = search._propose(len(state.candidates))
        state.candidates.append(search._evaluate(proposal, s.steps, schedule))
        search._save()
    if "halving_n" not in state.extra:
        state.extra["halving_n"] = _first_rung_size(search)
        search._save()
    n = state.extra["halving_n"]
    while len(state.candidates) < n:
        proposal = search._propose(len(state.candidates))
        if proposal is None:
            state.finished = "no new valid candidate for the first rung"
            break
        state.candidates.append(search._evaluate(proposal, s.steps, schedule))
        search._save()
    pool = list(state.candidates)
    for rung in range(1, s.rungs):
        target = s.steps * s.eta**rung
        scored = [c for c in pool if c["scores"].get(str(rung - 1)) is not None]
        scored.sort(key=lambda c: _better(s.objective, c["scores"][str(rung - 1)], c["id"]))
        keep = scored[: max(1, math.ceil(len(pool) / s.eta))]
        for record in sorted(keep, key=lambda c: c["id"]):
            if str(rung) in record["scores"]:
                continue  # done before the search was stopped
            search.say(f"{record['id']}: rung {rung}, training on to {target} steps")
            outcome = train_and_score(search.out / record["file"], search.out / record["run"], s,
                                      record["overrides"], steps=target, schedule_steps=schedule,
                                      resume=True, time_limit=_scaled(search.time_limit(), target - record["steps"], s.steps))  # fmt: skip
            record["tokens"] += (target - record["steps"]) * s.tokens_per_step
            record.update(outcome, rung=rung)
            record["scores"][str(rung)] = outcome.get("score")
            search._save()
        pool = keep
    if state.finished is None:
        state.finished = f"{s.rungs} rungs done"


def _scaled(limit: float | None, steps: int, per: int) -> float | None:
    """The per-candidate limit for `steps` more steps (the limit is set for `per` steps)."""
    return None if limit is None else limit * steps / per


def _better(objective: str, score: float, cid: str):
    return (score if objective == "bpb" else -score, cid)


def _first_rung_size(search) -> int:
    from nestdsl.explore.search import parse_budget

    s = search.settings
    kind, value = parse_budget(s.budget)
    per = s.steps * s.tokens_per_step
    if kind == "seconds":  # tokens per second of the bases, wall time included
        walls = [c.get("wall_s") or 0 for c in search.state.candidates]
        rate = sum(c["tokens"] for c in search.state.candidates) / max(sum(walls), 1e-9)
        value = value * rate
    n = int(value / (per * rung_cost_factor(s.eta, s.rungs)))
    return max(n, len(search.bases), s.eta)
