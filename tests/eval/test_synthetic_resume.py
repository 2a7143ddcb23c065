"""An interrupted recall or needle run resumes at its last record and ends with the numbers of
an uninterrupted one; a scored recall point is not trained again; another run's folder is
refused."""

from __future__ import annotations

import pytest

import nestdsl.eval.needle as needle
import nestdsl.eval.recall as recall
from nestdsl.errors import UserError
from nestdsl.eval.checkpoints import Checkpoints
from nestdsl.eval.needle import NeedleSettings, run_needle
from nestdsl.eval.recall import RecallSettings, point_folder, run_recall

SETTINGS = RecallSettings(steps=7, batch_size=4, eval_rows=6, heads=2, layers=1, vocab=64,
                          log_every=2)  # fmt: skip
POINT = {"L": 16, "N": 2, "d_model": 16}


class Interrupted(Exception):
    pass


def trained_steps(monkeypatch, task=recall, split="mqar-train") -> list[int]:
    """The training steps whose rows are drawn from now on (held-out rows are not counted)."""
    steps = []
    seed_of = task.step_seed

    def counting(seed, name, step):
        if name == split:
            steps.append(step)
        return seed_of(seed, name, step)

    monkeypatch.setattr(task, "step_seed", counting)
    return steps


def interrupt_at(patch, stop: int) -> None:
    """Make the run stop right after its checkpoint at step `stop` is saved (a kill there)."""
    save = Checkpoints.save

    def save_then_stop(self, step, *args):
        save(self, step, *args)
        if step == stop:
            raise Interrupted

    patch.setattr(Checkpoints, "save", save_then_stop)


def test_an_interrupted_point_resumes_where_it_stopped_with_the_same_numbers(tmp_path, monkeypatch,
                                                                            capsys):  # fmt: skip
    straight = run_recall("deltanet", [POINT], SETTINGS, progress=False)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 4)
        with pytest.raises(Interrupted):
            run_recall("deltanet", [POINT], SETTINGS, progress=False, work_dir=tmp_path)
    folder = tmp_path / point_folder(POINT)
    assert (folder / "checkpoints").is_dir() and not (folder / "point.json").exists()

    steps = trained_steps(monkeypatch)
    resumed = run_recall("deltanet", [POINT], SETTINGS, progress=False, work_dir=tmp_path)
    assert steps == [4, 5, 6]  # from the last record on, not from the start
    assert "resuming at step 4 from" in capsys.readouterr().err
    assert resumed["points"] == straight["points"]  # weights, optimizer and schedule restored
    assert resumed["work_dir"] == str(tmp_path)
    # scored: the result replaced the checkpoints, and the same command trains nothing
    assert (folder / "point.json").is_file() and not (folder / "checkpoints").exists()
    steps.clear()
    again = run_recall("deltanet", [POINT], SETTINGS, progress=False, work_dir=tmp_path)
    assert steps == [] and again["points"] == straight["points"]


OTHER = RecallSettings(**{**SETTINGS.__dict__, "lr": 1e-3})


def test_a_scored_point_of_other_settings_is_refused(tmp_path):
    run_recall("deltanet", [POINT], SETTINGS, progress=False, work_dir=tmp_path)
    with pytest.raises(UserError, match="another spec or other settings"):
        run_recall("deltanet", [POINT], OTHER, progress=False, work_dir=tmp_path)


def test_checkpoints_of_other_settings_are_refused(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_at(patch, 2)
        with pytest.raises(Interrupted):
            run_recall("deltanet", [POINT], SETTINGS, progress=False, work_dir=tmp_path)
    with pytest.raises(UserError, match="another spec or other settings"):
        run_recall("deltanet", [POINT], OTHER, progress=False, work_dir=tmp_path)


def test_an_interrupted_needle_run_resumes_with_the_same_numbers(tmp_path, monkeypatch):
    settings = NeedleSettings(train_length=100, steps=5, batch_size=2, eval_rows=2, d_model=16,
                              layers=1, log_every=2, lengths=(1,), depths=(0.5,),
                              kinds=("passkey",))  # fmt: skip
    straight = run_needle("deltanet", settings, progress=False)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 2)
        with pytest.raises(Interrupted):
            run_needle("deltanet", settings, progress=False, work_dir=tmp_path)
    steps = trained_steps(monkeypatch, needle, "needle-train")
    resumed = run_needle("deltanet", settings, progress=False, work_dir=tmp_path)
    assert steps == [2, 3, 4]
    assert {k: v for k, v in resumed.items() if k != "work_dir"} == straight
    assert not (tmp_path / "checkpoints").exists()  # scored: the checkpoints are gone


def test_a_work_dir_that_cannot_be_written_says_how_to_go_on(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"could not write checkpoint .*fix this and run the same command again"):
        run_recall("deltanet", [POINT], SETTINGS, progress=False, work_dir=blocker)
