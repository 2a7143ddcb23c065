"""`nestdsl compare` end to end at tiny sizes: the report, resuming, and user mistakes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nestdsl.cli import main
from nestdsl.compare import CompareSettings, compare
from nestdsl.errors import UserError
from nestdsl.train import TrainConfig, spec_source, train

SMALL = ("dims.d_model=16", "dims.n_heads=2", "dims.d_head=8", "dims.d_ff=32", "dims.n_layers=1")
RECALL = {"steps": 2, "batch_size": 2, "eval_rows": 4, "vocab": 32, "layers": 1,
          "grid": ["L=16,N=2,d_model=16"]}  # fmt: skip


def settings(corpus: Path, **changes) -> CompareSettings:
    base = dict(
        specs=("transformer", "deltanet"), budget=3 * 2 * 16, batch_size=2, seq_len=16,
        seeds=(0, 1), tasks=("bpb", "recall"),
        task_options={"bpb": {"max_bytes": 256}, "recall": RECALL},
        match_params=True, params=20_000, tolerance=0.1, data=str(corpus), overrides=SMALL,
        eval_batches=1, progress=False,
    )  # fmt: skip
    return CompareSettings(**{**base, **changes})


# The comparisons below train 2-8 tiny runs each (seconds per run on an idle 2-core machine).
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One finished comparison (two specs, two seeds, bpb and a tiny recall grid)."""
    root = tmp_path_factory.mktemp("compare")
    corpus = root / "text.txt"
    corpus.write_bytes(b"to be or not to be, that is the question. " * 60)
    out = root / "report"
    paths = compare(settings(corpus), out)
    return corpus, out, paths


@slow
def test_report_has_a_row_per_spec_and_every_column(done):
    _, out, paths = done
    assert paths["actions"] == {"train trained": 4, "bpb computed": 4, "recall computed": 4}
    md = (out / "report.md").read_text()
    for row in ("| `transformer` |", "| `deltanet` |", "| best |"):
        assert row in md
    for column in ("parameters", "tokens/s ↑", "bpb ↓", "recall L=16,N=2,d=16 ↑"):
        assert column in md
    assert "± " in md  # two seeds: a spread
    assert "3 steps of 2 sequences x 16 bytes" in md
    for figure in ("loss_curves.png", "recall.png"):
        assert (out / figure).stat().st_size > 1000
        assert f"]({figure})" in md


@slow
def test_report_json_holds_every_seed(done):
    _, out, _ = done
    body = json.loads((out / "report.json").read_text())
    columns = {c["name"]: c for c in body["columns"]}
    bpb = columns["bpb"]
    assert bpb["better"] == "lower" and bpb["winner"] in ("transformer", "deltanet")
    for label in ("transformer", "deltanet"):
        seeds = bpb["values"][label]["per_seed"]
        assert len(seeds) == 2 and all(0 < v < 10 for v in seeds)
        assert bpb["values"][label]["mean"] == pytest.approx(sum(seeds) / 2)
    # the parameters were matched: both widened from d_model 16 to within 10% of 20,000
    assert body["settings"]["target_params"] == 20_000
    for spec in body["specs"]:
        assert spec["resize"][0] == "dims.d_model=24"
        assert spec["overrides"][: len(SMALL)] == list(SMALL)  # shared ones first
        assert abs(spec["parameters"] - 20_000) <= 0.1 * 20_000
    assert "--match-params --params 20000 --param-tolerance 0.1" in (out / "report.md").read_text()


@slow
def test_every_run_is_an_ordinary_run_folder(done):
    _, out, _ = done
    for label in ("transformer", "deltanet"):
        for seed in (0, 1):
            run = out / "runs" / label / f"seed-{seed}"
            config = json.loads((run / "config.json").read_text())
            assert config["train"]["steps"] == 3 and config["train"]["seed"] == seed
            assert (run / "checkpoints" / "step-00000003").is_dir()
            result = json.loads((run / "eval" / "bpb.json").read_text())
            assert result["trained_steps"] == 3
            recall = json.loads((run / "eval" / "recall.json").read_text())
            assert recall["settings"]["seed"] == seed


def _stamps(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted((out / "runs").rglob("*")) if p.is_file()}


@slow
def test_resume_reuses_finished_work(done):
    corpus, out, _ = done
    before = _stamps(out)
    paths = compare(settings(corpus, resume=True), out)
    assert paths["actions"] == {"train reused": 4, "bpb reused": 4, "recall reused": 4}
    assert _stamps(out) == before  # no run folder, checkpoint or result was touched


@slow
def test_resume_recomputes_only_what_is_missing_or_changed(done):
    corpus, out, _ = done
    (out / "runs" / "deltanet" / "seed-1" / "eval" / "bpb.json").unlink()
    paths = compare(settings(corpus, resume=True), out)
    assert paths["actions"] == {"train reused": 4, "bpb computed": 1, "bpb reused": 3,
                                "recall reused": 4}  # fmt: skip
    # other task options: the results are recomputed, the training reused
    changed = settings(corpus, resume=True, tasks=("bpb",),
                       task_options={"bpb": {"max_bytes": 128}})  # fmt: skip
    paths = compare(changed, out)
    assert paths["actions"] == {"train reused": 4, "bpb computed": 4}
    assert "recall" not in (out / "report.md").read_text()
    # fewer seeds: a report of seed 0 alone, nothing trained
    paths = compare(settings(corpus, resume=True, seeds=(0,), tasks=("bpb",),
                             task_options={"bpb": {"max_bytes": 128}}), out)  # fmt: skip
    assert paths["actions"] == {"train reused": 2, "bpb reused": 2}
    assert "± " not in (out / "report.md").read_text()


@slow
def test_an_unfinished_run_is_resumed_from_its_checkpoint(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "report"
    short = settings(corpus, specs=("transformer",), seeds=(0,), tasks=("bpb",),
                     task_options={"bpb": {"max_bytes": 128}}, match_params=False,
                     params=None)  # fmt: skip
    compare(short, out)
    run = out / "runs" / "transformer" / "seed-0"
    # Replace the run by one stopped at step 1, as if the comparison had been killed there.
    shutil.rmtree(run)
    config = TrainConfig(steps=1, batch_size=2, seq_len=16, data=str(corpus), eval_every=1,
                         eval_batches=1, ckpt_every=1, keep_checkpoints=1,
                         schedule_steps=3, device="cpu")  # fmt: skip
    train(spec_source("transformer", list(SMALL)), config, run, progress=False)
    paths = compare(settings(corpus, specs=("transformer",), seeds=(0,), tasks=("bpb",),
                             task_options={"bpb": {"max_bytes": 128}}, match_params=False,
                             params=None, resume=True), out)  # fmt: skip
    assert paths["actions"]["train resumed"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "resume" and r["step"] == 1 for r in records)
    assert (run / "checkpoints" / "step-00000003").is_dir()


@slow
def test_starting_over_an_earlier_comparison_is_refused(done):
    corpus, out, _ = done
    with pytest.raises(UserError, match="already holds a comparison; pass --resume"):
        compare(settings(corpus), out)
    with pytest.raises(UserError, match="compared with budget 96, now 192"):
        compare(settings(corpus, resume=True, budget=192), out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "10"], "less than one step of 8 x 128"),
        (["--budget", "5000", "--tasks", "bpb,nope"], "unknown task 'nope'"),
        (["--budget", "5000", "--seeds", "0,x"], "--seeds takes integers"),
        (["--budget", "5000", "--seeds", "1,1"], "repeats a seed"),
        (["--budget", "5000", "--params", "1000"], "add it"),
        (["--budget", "5000", "--task-set", "bpb.steps=3"], "task bpb has no flag 'steps'"),
        (["--budget", "5000", "--task-set", "recall.steps=3"], "--tasks does not run 'recall'"),
        (["--budget", "5000", "--task-set", "bpb=3"], "TASK.FLAG=VALUE"),
        (["--budget", "5000", "--task-set", "bpb.max_bytes=lots"], "'lots' is not a int"),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    code = main(["compare", "transformer", *argv, "--out", str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("nestdsl compare: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "c").exists()


def test_an_unmatchable_size_is_a_one_line_error(tmp_path, capsys):
    code = main(["compare", "transformer", "deltanet", "--budget", "5000", "--match-params",
                 "--params", "50", "--out", str(tmp_path / "c"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "no d_model gives 50 parameters within 5%; the closest is d_model" in err


@slow
def test_tasks_with_figures_put_them_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory's runs/eval
    needle = {"train_length": 120, "lengths": "1,2", "depths": "0,1", "kinds": "passkey",
              "steps": 2, "batch_size": 2, "eval_rows": 2, "d_model": 16, "layers": 1}  # fmt: skip
    in_context = {"length": 64, "piece": 32, "streams": 2}
    changed = settings(tmp_path, specs=("transformer",), seeds=(0,), data=None, budget=64,
                       tasks=("needle", "in-context"), match_params=False, params=None,
                       task_options={"needle": needle, "in-context": in_context})  # fmt: skip
    out = tmp_path / "report"
    compare(changed, out)
    md = (out / "report.md").read_text()
    for column in ("needle 1x ↑", "needle 2x ↑", "in-context bpb ↓"):
        assert column in md
    for figure in ("needle.png", "in-context.png"):
        assert (out / "runs/transformer/seed-0/eval" / figure).read_bytes()[:4] == b"\x89PNG"
        assert f"](runs/transformer/seed-0/eval/{figure})" in md
    assert not (tmp_path / "runs").exists()
