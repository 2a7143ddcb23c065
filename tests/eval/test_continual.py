"""The `continual` task: its metrics on hand-built matrices, a tiny run end to end, and that the
model, its optimizer and its memory really carry from stage to stage (differential checks)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from nestdsl.cli import main
from nestdsl.errors import UserError
from nestdsl.eval.continual import (
    ContinualSettings,
    Learner,
    build_learner,
    load_domains,
    run_continual,
)
from nestdsl.eval.forgetting import (
    average_final,
    average_forgetting,
    backward_transfer,
    forgetting,
    forward_transfer,
    summarize,
)

# rows: after training on domain i; columns: scored on domain j (bits per byte, lower is better)
R = [
    [2.0, 3.0, 3.5],
    [2.4, 1.8, 3.2],
    [2.6, 2.1, 1.5],
]
BASELINE = [4.0, 4.0, 4.0]
CPU = torch.device("cpu")


def test_metrics_on_a_known_matrix():
    assert average_final(R) == pytest.approx((2.6 + 2.1 + 1.5) / 3)
    # both earlier domains got worse after their own stage: negative BWT means forgetting
    assert backward_transfer(R) == pytest.approx(((2.0 - 2.6) + (1.8 - 2.1)) / 2) == -0.45
    assert forgetting(R) == pytest.approx([2.6 - 2.0, 2.1 - 1.8])
    assert average_forgetting(R) == pytest.approx(0.45)
    assert forward_transfer(R, BASELINE) == pytest.approx(((4.0 - 3.0) + (4.0 - 3.2)) / 2)
    assert summarize(R, BASELINE) == {
        "average_final_bpb": 2.066667,
        "backward_transfer": -0.45,
        "forgetting": [0.6, 0.3],
        "average_forgetting": 0.45,
        "forward_transfer": 0.9,
    }


def test_forgetting_measures_from_the_best_earlier_stage_not_the_own_one():
    # Domain 1 was best (1.7) after stage 0, before its own stage (1.9): Chaudhry's forgetting
    # takes the best of every earlier stage, BWT the domain's own stage.
    r = [
        [2.0, 1.7, 3.0],
        [2.2, 1.9, 3.0],
        [2.1, 2.0, 1.0],
    ]
    assert forgetting(r) == pytest.approx([0.1, 0.3])
    assert backward_transfer(r) == pytest.approx(((2.0 - 2.1) + (1.9 - 2.0)) / 2)


def test_no_forgetting_gives_positive_transfer():
    r = [
        [3.0, 3.5],
        [2.5, 2.0],
    ]
    assert backward_transfer(r) == pytest.approx(0.5)  # later training helped domain 0
    assert forgetting(r) == pytest.approx([-0.5])  # its final bpb is its best


def test_one_domain_and_bad_shapes():
    assert backward_transfer([[2.0]]) is None and average_forgetting([[2.0]]) is None
    assert forgetting([[2.0]]) == [] and average_final([[2.0]]) == 2.0
    with pytest.raises(ValueError, match="square"):
        backward_transfer([[1.0, 2.0]])
    with pytest.raises(ValueError, match="baseline"):
        forward_transfer(R, [1.0])


def test_the_rate_warms_up_in_the_first_stage_then_stays_constant():
    learner = Learner(None, None, ContinualSettings(warmup_steps=4, steps_per_stage=10), CPU)
    assert [learner.lr_factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert learner.lr_factor(10) == learner.lr_factor(39) == 1.0  # later stages: no new warm-up
    short = Learner(None, None, ContinualSettings(warmup_steps=15, steps_per_stage=2), CPU)
    assert [short.lr_factor(s) for s in range(3)] == [0.5, 1.0, 1.0]  # capped at one stage


TINY = ["--d-model", "16", "--heads", "2", "--layers", "1", "--steps-per-stage", "2",
        "--batch-size", "2", "--seq-len", "16", "--max-bytes", "64", "--no-progress"]  # fmt: skip


def test_end_to_end_through_the_command_line(tmp_path, capsys):
    out, work = tmp_path / "continual.json", tmp_path / "work"
    argv = ["eval", "transformer", "--task", "continual", "--domains", "jargon,kjv,milton",
            "--work-dir", str(work), "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["domains"] == ["jargon", "kjv", "milton"]  # the order given, not the default
    assert len(result["R"]) == 3 and all(len(row) == 3 for row in result["R"])
    assert len(result["baseline"]) == 3 and len(result["forgetting"]) == 2
    assert all(0 < b < 10 for row in result["R"] for b in row)
    assert result["backward_transfer"] == pytest.approx(backward_transfer(result["R"]), abs=1e-6)
    assert result["settings"]["steps_per_stage"] == 2
    assert (work / "continual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((work / "stages").glob("step-*"))) == 3  # one checkpoint per stage
    printed = capsys.readouterr().out
    assert "backward transfer" in printed and f"result: {out}" in printed


@pytest.fixture
def texts(tmp_path):
    """Two small, different domains as files (domains may be any corpus file)."""
    a, b = tmp_path / "alpha.txt", tmp_path / "beta.txt"
    a.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 60)
    b.write_bytes(b"0123456789 + 9876543210 = 9999999999; " * 60)
    return (str(a), str(b))


def tiny(texts, **changes) -> ContinualSettings:
    base = ContinualSettings(domains=texts, steps_per_stage=3, batch_size=2, seq_len=16,
                             max_bytes=64, d_model=16, heads=2, layers=1, warmup_steps=2)  # fmt: skip
    return ContinualSettings(**{**base.__dict__, **changes})


def snapshot(learner) -> dict:
    return copy.deepcopy({k: v.detach() for k, v in learner.model.state_dict().items()})


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_two_starts_from_stage_one_weights_and_optimizer(texts, tmp_path):
    settings = tiny(texts)
    seen = []
    run_continual("transformer", settings, work_dir=tmp_path / "w", progress=False,
                  on_stage=lambda stage, learner: seen.append(snapshot(learner)))  # fmt: skip
    domains = load_domains(settings)

    # The same stages replayed by hand on one learner give exactly the run's weights.
    learner, _, _ = build_learner("transformer", settings, CPU)
    learner.train_stage(0, domains[0])
    assert same(snapshot(learner), seen[0])
    learner.train_stage(1, domains[1])
    assert same(snapshot(learner), seen[1])
    adam = next(iter(learner.optimizer.optimizers.values()))
    steps = {int(s["step"]) for s in adam.state.values()}
    assert steps == {2 * settings.steps_per_stage}  # one optimizer counted both stages

    # Differential: stage 2 from stage 1's weights but a fresh optimizer ends elsewhere, and so
    # does stage 2 from the initial weights: the run carried both.
    fresh_optimizer, _, _ = build_learner("transformer", settings, CPU)
    fresh_optimizer.model.load_state_dict(seen[0])
    fresh_optimizer.train_stage(1, domains[1])
    assert not same(snapshot(fresh_optimizer), seen[1])
    from_scratch, _, _ = build_learner("transformer", settings, CPU)
    from_scratch.train_stage(1, domains[1])
    assert not same(snapshot(from_scratch), seen[1])


def test_a_reset_never_memory_carries_its_state_across_stages(texts, tmp_path):
    settings = tiny(texts)
    carried = []
    run_continual(
        "deltanet", settings, work_dir=tmp_path / "w", progress=False,
        overrides=["memories.M.reset=never"],
        on_stage=lambda stage, learner: carried.append(dict(learner.memory)),
    )  # fmt: skip
    assert [sorted(m) for m in carried] == [["layer.0.M.S"]] * 2
    assert carried[0]["layer.0.M.S"].abs().sum() > 0
    assert not torch.equal(carried[0]["layer.0.M.S"], carried[1]["layer.0.M.S"])


def test_an_interrupted_run_resumes_to_the_same_matrix(texts, tmp_path):
    settings = tiny(texts)
    whole = run_continual("transformer", settings, work_dir=tmp_path / "whole", progress=False)

    def stop_after_first(stage, learner):
        if stage == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_continual("transformer", settings, work_dir=tmp_path / "cut", progress=False,
                      on_stage=stop_after_first)  # fmt: skip
    resumed = run_continual("transformer", settings, work_dir=tmp_path / "cut", progress=False)
    assert resumed["R"] == whole["R"] and resumed["baseline"] == whole["baseline"]
    with pytest.raises(UserError, match="other settings"):
        run_continual("transformer", tiny(texts, steps_per_stage=4),
                      work_dir=tmp_path / "cut", progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--domains", "kjv,kjv"], "kjv appears twice"),
        (["--domains", "kjv,bibel"], "embedded: shakespeare, kjv, milton, jargon"),
        (["--steps-per-stage", "0"], "steps_per_stage must be at least 1"),
        (["--grid", "L=16"], "--grid (belongs to --task recall"),
    ],
    ids=["repeated", "unknown", "zero-steps", "foreign-flag"],
)
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    code = main(["eval", "transformer", "--task", "continual", "--work-dir", str(tmp_path),
                 "--no-progress", *argv])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1 and message in error and "Traceback" not in error
    assert error.startswith("nestdsl eval: error: ") and error.count("\n") == 1


def test_a_run_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "spec.yaml").write_text("")
    assert main(["eval", str(run), "--task", "continual", "--no-progress"]) == 1
    assert "trains from scratch through the domains" in capsys.readouterr().err


def test_the_default_folder_is_one_per_settings_and_is_resumed(texts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = tiny(texts, steps_per_stage=1)
    first = run_continual("transformer", settings, progress=False)
    other_seed = run_continual("transformer", tiny(texts, steps_per_stage=1, seed=1),
                               progress=False)  # fmt: skip
    assert first["work_dir"] != other_seed["work_dir"]  # seeds never collide (nestdsl compare)
    assert first["work_dir"].startswith("runs/eval/transformer-continual-")
    trained = []
    again = run_continual("transformer", settings, progress=False,
                          on_stage=lambda stage, learner: trained.append(stage))  # fmt: skip
    assert trained == [] and again["R"] == first["R"]  # every stage was found and reused
