"""A budgeted search over nestings (`nestdsl explore`): propose, check, train, score, rank.

Strategies:
* `random`: each candidate is a base spec after a random chain of 1..`max_mutations` operators;
* `evolution`: each candidate mutates one of the `population` best candidates so far;
* `halving` (successive halving): many candidates trained `steps` steps, the best 1/`eta`
  trained on to `eta` times as many, and so on for `rungs` rungs, under one learning-rate
  schedule as long as the last rung (so a rung's scores compare runs at one point of it).
The bases themselves are the first candidates: every mutant is ranked against them.

Reproducible: candidate i is proposed from `Random(f"{seed}/{i}")` and the scores of the
candidates before it, training uses the search's seed, and (on the CPU) training and scoring
are deterministic; so a seed gives the same candidates, and with a token budget the same run.
Resumable: the folder's search.json is rewritten after every finished candidate; `--resume`
reads it and proposes the next one, so a kill loses at most the candidate in flight (its run
folder is trained again from scratch; a halving rung continues from the run's checkpoint).
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nestdsl.errors import UserError
from nestdsl.explore.candidates import Rejections, check_candidate, fingerprint
from nestdsl.explore.evaluate import count_params, match_overrides, train_and_score
from nestdsl.explore.mutations import mutate
from nestdsl.explore.spec_doc import slug
from nestdsl.spec.loader import load_yaml
from nestdsl.spec.shipped import read_spec

STRATEGIES = ("random", "evolution", "halving")
OBJECTIVES = ("bpb", "recall")
ATTEMPTS = 60  # proposals tried per candidate before the space counts as exhausted


@dataclass
class Settings:
    bases: list[str]
    budget: str
    strategy: str = "evolution"
    seed: int = 0
    objective: str = "bpb"
    steps: int = 60  # training steps per candidate (halving: of the first rung)
    batch_size: int = 8
    seq_len: int = 128
    tolerance: float = 0.1  # relative parameter mismatch allowed against the base
    max_mutations: int = 2
    population: int = 4  # evolution: parents are drawn from this many best
    eta: int = 2  # halving: keep 1/eta per rung, train eta times longer
    rungs: int = 3
    score_bytes: int = 1 << 15
    data: str | None = None
    # Seconds one candidate may train. None: with a time budget, 5 x the slowest base's training
    # time (a mutant that runs token by token must not eat the budget); with tokens, no limit.
    max_candidate_s: float | None = None

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("steps", "batch_size", "seq_len", "max_mutations", "population", "rungs"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.eta < 2:
            raise UserError(f"halving keeps 1/eta per rung: eta must be at least 2, got {self.eta}")
        if self.max_candidate_s is not None and self.max_candidate_s <= 0:
            raise UserError(f"--max-candidate-time must be positive, got {self.max_candidate_s}")
        if not 0 <= self.tolerance < 1:
            raise UserError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        parse_budget(self.budget)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def parse_budget(text: str) -> tuple[str, float]:
    """`30m`, `1h`, `900s` -> ("seconds", n); `2M`, `500k`, `100000` -> ("tokens", n)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    units = {"s": ("seconds", 1), "m": ("seconds", 60), "min": ("seconds", 60), "h": ("seconds", 3600),
             "": ("tokens", 1), "k": ("tokens", 1e3), "M": ("tokens", 1e6), "G": ("tokens", 1e9)}  # fmt: skip
    if not match or match.group(2) not in units:
        raise UserError(f"--budget is tokens (`500k`, `2M`) or time (`900s`, `15m`, `1h`), got {text!r}")
    kind, scale = units[match.group(2)]
    value = float(match.group(1)) * scale
    if value <= 0:
        raise UserError(f"--budget must be positive, got {text!r}")
    return kind, value


@dataclass
class State:
    """Everything search.json holds: the settings, every finished candidate, the counts."""

    settings: Settings
    candidates: list[dict] = field(default_factory=list)
    rejections: Rejections = field(default_factory=Rejections)
    elapsed_s: float = 0.0
    finished: str | None = None  # why the search stopped, once it has
    extra: dict = field(default_factory=dict)  # strategy state (halving: the first rung's size)

    def as_dict(self) -> dict:
        return {"settings": asdict(self.settings), "candidates": self.candidates,
                "rejections": self.rejections.as_dict(), "elapsed_s": round(self.elapsed_s, 1),
                "finished": self.finished, "extra": self.extra}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> State:
        return cls(Settings(**data["settings"]), data["candidates"],
                   Rejections.from_dict(data["rejections"]), data["elapsed_s"], data.get("finished"),
                   data.get("extra", {}))  # fmt: skip


class Search:
    def __init__(self, out: str | Path, settings: Settings | None = None, *, resume: bool = False,
                 say=print) -> None:  # fmt: skip
        self.out = Path(out)
        self.say = say
        state_file = self.out / "search.json"
        if resume:
            if not state_file.exists():
                raise UserError(f"{self.out} holds no search to resume (no search.json)")
            self.state = State.from_dict(json.loads(state_file.read_text()))
            if settings is not None and _key(settings) != _key(self.state.settings):
                raise UserError(f"{self.out} was searched with other settings; resume with the "
                                "same bases, --strategy, --seed, --objective and sizes")  # fmt: skip
            if settings is not None:
                self.state.settings.budget = settings.budget  # a resumed search may get more budget
            self.state.finished = None
        else:
            if state_file.exists():
                raise UserError(f"{self.out} already holds a search; pass --resume to continue it "
                                "or choose another --out")  # fmt: skip
            if settings is None:
                raise UserError("a new search needs its settings")
            self.state = State(settings)
        self.settings = self.state.settings
        self.settings.check()
        self.bases = [self._base(b) for b in self.settings.bases]
        self.started = time.perf_counter()
        self.elapsed_before = self.state.elapsed_s

    # ------------------------------------------------------------------ bookkeeping

    def _base(self, name: str) -> dict:
        raw, file = read_spec(name)
        doc = load_yaml(raw, file).data
        checked = check_candidate(doc, file)
        if not checked.valid:
            raise UserError(f"base spec {name} does not validate: {checked.detail}")
        return {"name": checked.checked.name, "doc": doc, "fingerprint": fingerprint(checked.checked.plan)}

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _tokens_used(self) -> int:
        return sum(c.get("tokens", 0) for c in self.state.candidates)

    def _save(self) -> None:
        self.state.elapsed_s = self._elapsed()
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "search.json.tmp"
        tmp.write_text(json.dumps(self.state.as_dict(), indent=1))
        tmp.replace(self.out / "search.json")
        from nestdsl.explore.leaderboard import write_leaderboard

        write_leaderboard(self.out, self.state)

    def _budget_left(self, next_tokens: int) -> bool:
        kind, value = parse_budget(self.settings.budget)
        if kind == "tokens":
            return self._tokens_used() + next_tokens <= value
        return self._elapsed() < value

    # ------------------------------------------------------------------ proposing

    def _seen(self) -> set[str]:
        return {b["fingerprint"] for b in self.bases} | {c["fingerprint"] for c in self.state.candidates}

    def _propose(self, index: int) -> dict | None:
        """Candidate `index`: a base (the first ones), else a new valid mutant, or None."""
        if index < len(self.bases):
            base = self.bases[index]
            return {"id": f"c{index:04d}", "base": base["name"], "parent": None, "mutations": [],
                    "doc": base["doc"], "fingerprint": base["fingerprint"]}  # fmt: skip
        rng = random.Random(f"{self.settings.seed}/{index}")
        seen = self._seen()
        for _ in range(ATTEMPTS):
            parent = self._parent(rng)
            steps = rng.randint(1, self.settings.max_mutations)
            doc, done, skipped = mutate(parent["doc"], rng, steps)
            for name in skipped:
                self.state.rejections.not_applicable[name] += 1
            if not done:
                continue
            ops = [line.split(":")[0] for line in done]
            checked = check_candidate(doc)
            if not checked.valid:
                self.state.rejections.add(checked.reason, ops)
                continue
            fp = fingerprint(checked.checked.plan)
            if fp in seen:
                self.state.rejections.duplicates += 1
                continue
            return {"id": f"c{index:04d}", "base": parent["base"], "parent": parent["id"],
                    "mutations": parent["mutations"] + done, "doc": doc, "fingerprint": fp}  # fmt: skip
        return None

    def _parent(self, rng: random.Random) -> dict:
        bases = [{"id": f"c{i:04d}", "base": b["name"], "mutations": [], "doc": b["doc"]}
                 for i, b in enumerate(self.bases)]  # fmt: skip
        if self.settings.strategy != "evolution":
            return bases[rng.randrange(len(bases))]
        scored = [c for c in self.state.candidates if c.get("score") is not None]
        ranked = sorted(scored, key=self._rank_key)[: self.settings.population]
        pool = [self._record_doc(c) for c in ranked] or bases
        return pool[rng.randrange(len(pool))]

    def _record_doc(self, record: dict) -> dict:
        path = self.out / record["file"]
        return {**record, "doc": load_yaml(path.read_bytes(), str(path)).data}

    def _rank_key(self, record: dict):
        score = record.get("score")
        if score is None:
            return (-record.get("rung", 0), math.inf, record["id"])
        better = score if self.settings.objective == "bpb" else -score
        return (-record.get("rung", 0), better, record["id"])

    # ------------------------------------------------------------------ evaluating

    def _evaluate(self, proposal: dict, steps: int, schedule_steps: int | None) -> dict:
        cid = proposal["id"]
        name = f"{cid}-{slug(proposal['base'])}"
        doc = copy.deepcopy(proposal["doc"])
        doc["name"] = name
        header = [f"nestdsl explore candidate {cid} (seed {self.settings.seed}, strategy "
                  f"{self.settings.strategy})",
                  f"base: {proposal['base']}; parent: {proposal['parent'] or 'none (the base itself)'}"]  # fmt: skip
        header += [f"mutation: {m}" for m in proposal["mutations"]] or ["mutations: none"]
        file = Path("candidates") / f"{name}.yaml"
        path = self.out / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(check_candidate(doc, str(path), "\n".join(header)).text)
        record = {k: v for k, v in proposal.items() if k != "doc"}
        record.update(file=str(file), run=f"runs/{cid}", rung=0)
        params = count_params(path)
        overrides, note = [], "base"
        if proposal["parent"] is not None and self.settings.objective == "bpb":
            target = self._base_params(proposal["base"])
            overrides, note = match_overrides(path, target, self.settings.tolerance)
            note = "within tolerance" if note == "matched" and not overrides else note
        record.update(params_own=params, overrides=overrides, matching=note,
                      params=count_params(path, overrides) if overrides else params)  # fmt: skip
        self.say(f"{cid}: {', '.join(proposal['mutations']) or proposal['base'] + ' (base)'}")
        wall = time.perf_counter()
        limit = self.time_limit() if proposal["parent"] is not None else None
        outcome = train_and_score(path, self.out / record["run"], self.settings, overrides,
                                  steps=steps, schedule_steps=schedule_steps, time_limit=limit)  # fmt: skip
        record.update(outcome)
        record["tokens"] = steps * self.settings.tokens_per_step
        record["wall_s"] = round(time.perf_counter() - wall, 1)  # training and scoring
        record["scores"] = {"0": outcome.get("score")}
        self.say(f"{cid}: " + (f"score {outcome['score']:.4f}" if "score" in outcome else
                               f"failed: {outcome.get('error')}"))  # fmt: skip
        return record

    def time_limit(self) -> float | None:
        """Seconds a mutant may train (see Settings.max_candidate_s)."""
        if self.settings.max_candidate_s is not None:
            return self.settings.max_candidate_s
        if parse_budget(self.settings.budget)[0] != "seconds":
            return None
        walls = [c.get("train_s") or 0 for c in self.state.candidates if c["parent"] is None]
        return 5 * max(walls) if walls and max(walls) > 0 else None

    def _base_params(self, base_name: str) -> int:
        for c in self.state.candidates:
            if c["parent"] is None and c["base"] == base_name:
                return c["params"]
        raise UserError(f"internal: the base `{base_name}` was not evaluated first; this is a bug")

    # ------------------------------------------------------------------ the loop

    def run(self) -> State:
        if self.settings.strategy == "halving":
            from nestdsl.explore.halving import run_halving

            run_halving(self)
        else:
            self._run_sequential()
        self._save()
        return self.state

    def _run_sequential(self) -> None:
        steps = self.settings.steps
        cost = steps * self.settings.tokens_per_step
        while True:
            index = len(self.state.candidates)
            if index >= len(self.bases) and not self._budget_left(cost):
                self.state.finished = "budget spent"
                return
            proposal = self._propose(index)
            if proposal is None:
                self.state.finished = f"no new valid candidate in {ATTEMPTS} proposals"
                return
            self.state.candidates.append(self._evaluate(proposal, steps, None))
            self._save()


def _key(settings: Settings) -> dict:
    """What a resumed search must share with the one it continues (the budget may grow)."""
    return {k: v for k, v in asdict(settings).items() if k != "budget"}
