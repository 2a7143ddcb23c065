"""`nestdsl explore` end to end on a width-16 spec: reproducible for a seed, resumable after a
kill with the same leaderboard, successive halving keeps the best, the command's folder.

Every search here trains each candidate 2 steps of 2 x 32 bytes, so a candidate costs 128
tokens and a token budget fixes how many are trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nestdsl.explore.search as search_module
from nestdsl import cli
from nestdsl.errors import UserError
from nestdsl.explore.leaderboard import TIMING
from nestdsl.explore.search import Search, Settings, parse_budget

TINY = str(Path(__file__).with_name("tiny.yaml"))
SIZES = dict(steps=2, batch_size=2, seq_len=32, score_bytes=2048)


def settings(budget: str, seed: int = 0, **more) -> Settings:
    return Settings(bases=[TINY], budget=budget, seed=seed, **{**SIZES, **more})


def quiet(_message: str) -> None:
    pass


def board(out: Path) -> list[dict]:
    """The ranking, without what depends on the machine's speed."""
    rows = json.loads((out / "leaderboard.json").read_text())["ranking"]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_budgets_are_tokens_or_time():
    assert parse_budget("500k") == ("tokens", 500_000)
    assert parse_budget("2M") == ("tokens", 2_000_000)
    assert parse_budget("384") == ("tokens", 384)
    assert parse_budget("15m") == ("seconds", 900)
    assert parse_budget("1h") == ("seconds", 3600)
    for bad in ("", "15 minutes", "-3", "0"):
        with pytest.raises(UserError, match="--budget"):
            parse_budget(bad)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_leaderboard(tmp_path, monkeypatch):
    whole = Search(tmp_path / "whole", settings("384", strategy="evolution"), say=quiet).run()
    assert [c["id"] for c in whole.candidates] == ["c0000", "c0001", "c0002"]
    assert whole.candidates[0]["parent"] is None and whole.candidates[1]["mutations"]

    real = search_module.train_and_score

    def killed_at_c0002(path, run_dir, *args, **kwargs):
        if run_dir.name == "c0002":
            run_dir.mkdir(parents=True)
            (run_dir / "half-written").write_text("the candidate in flight")
            raise KeyboardInterrupt
        return real(path, run_dir, *args, **kwargs)

    monkeypatch.setattr(search_module, "train_and_score", killed_at_c0002)
    with pytest.raises(KeyboardInterrupt):
        Search(tmp_path / "cut", settings("384", strategy="evolution"), say=quiet).run()
    kept = json.loads((tmp_path / "cut" / "search.json").read_text())["candidates"]
    assert [c["id"] for c in kept] == ["c0000", "c0001"]  # at most the candidate in flight lost
    monkeypatch.setattr(search_module, "train_and_score", real)
    resumed = Search(tmp_path / "cut", settings("384", strategy="evolution"), resume=True, say=quiet).run()

    assert board(tmp_path / "cut") == board(tmp_path / "whole")
    assert not (tmp_path / "cut" / "runs" / "c0002" / "half-written").exists()
    # Two runs with one seed propose the same candidates; another seed other ones.
    same = [(c["fingerprint"], c["mutations"]) for c in resumed.candidates]
    assert same == [(c["fingerprint"], c["mutations"]) for c in whole.candidates]
    other = Search(tmp_path / "seed1", settings("384", seed=1), say=quiet)
    assert [other._propose(i)["fingerprint"] for i in (1, 2)] != [f for f, _ in same[1:]]


@pytest.mark.slow
def test_halving_trains_the_best_half_on(tmp_path):
    # 768 tokens / (128 per first-rung run x 1.5) = 4 candidates; 2 go on to 4 steps.
    state = Search(tmp_path / "h", settings("768", strategy="halving", rungs=2), say=quiet).run()
    assert len(state.candidates) == 4 and state.extra["halving_n"] == 4
    first = sorted((c for c in state.candidates if c["scores"]["0"] is not None),
                   key=lambda c: (c["scores"]["0"], c["id"]))  # fmt: skip
    kept = {c["id"] for c in first[:2]}
    assert {c["id"] for c in state.candidates if c["rung"] == 1} == kept
    for c in state.candidates:
        assert c["steps"] == (4 if c["id"] in kept else 2)
        assert c["tokens"] == c["steps"] * 64
    ranking = json.loads((tmp_path / "h" / "leaderboard.json").read_text())["ranking"]
    assert {r["id"] for r in ranking[:2]} == kept  # a later rung ranks first


@pytest.mark.slow
def test_the_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "search"
    args = ["explore", TINY, "--budget", "256", "--steps", "2", "--batch-size", "2",
            "--seq-len", "32", "--seed", "3", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "# Leaderboard" in printed and "c0001" in printed
    for name in ("search.json", "leaderboard.md", "leaderboard.json", "pareto.png", "graphs.md"):
        assert (out / name).is_file(), name
    mutant = next((out / "candidates").glob("c0001-*.yaml")).read_text()
    assert "# base: tiny-gdn; parent: c0000" in mutant and "# mutation: " in mutant
    assert (out / "runs" / "c0001" / "metrics.jsonl").is_file()
    # A second start in the same folder is refused; --resume with more budget goes on.
    assert cli.main(args) == 1
    assert "--resume" in capsys.readouterr().err
    more = [*args[:3], "384", *args[4:], "--resume", "--no-pictures"]
    assert cli.main(more) == 0
    ids = [c["id"] for c in json.loads((out / "search.json").read_text())["candidates"]]
    assert ids == ["c0000", "c0001", "c0002"]


@pytest.mark.slow
def test_a_candidate_over_its_time_limit_fails_and_the_search_goes_on(tmp_path):
    state = Search(tmp_path / "t", settings("256", max_candidate_s=0.01), say=quiet).run()
    base, mutant = state.candidates
    assert base.get("score") is not None  # bases train without a limit
    assert "over the time limit" in mutant["error"] and mutant.get("score") is None
    assert state.finished == "budget spent"


def test_a_failure_after_the_time_limit_is_reported_as_the_limit(tmp_path, monkeypatch):
    import time

    import nestdsl.train as train_module
    from nestdsl.explore.evaluate import train_and_score

    def diverges_late(*_args, **_kwargs):  # the limit passes while this step runs
        time.sleep(0.5)  # the loop would note it and stop at the step boundary, after its checks
        raise UserError("the loss became nan at step 1; try a smaller --lr")

    monkeypatch.setattr(train_module, "train", diverges_late)
    sizes = settings("256")
    result = train_and_score(Path(TINY), tmp_path / "c", sizes, [], steps=2, time_limit=0.01)
    assert result["error"].startswith("over the time limit (0.01 s"), result
    slow = train_and_score(Path(TINY), tmp_path / "c", sizes, [], steps=2, time_limit=60)
    assert slow["error"].startswith("the loss became nan"), slow


@pytest.mark.slow
def test_the_recall_objective_ranks_by_accuracy(tmp_path):
    state = Search(tmp_path / "r", settings("256", objective="recall"), say=quiet).run()
    for c in state.candidates:
        assert 0 <= c["recall"] <= 1 and c["score"] == c["recall"], c
    ranking = json.loads((tmp_path / "r" / "leaderboard.json").read_text())
    assert ranking["better"] == "higher"
    scores = [r["score"] for r in ranking["ranking"]]
    assert scores == sorted(scores, reverse=True)
