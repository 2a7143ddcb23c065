"""`nestdsl.load_run(RUN)`: a trained run back in Python, as the run folder records it."""

from __future__ import annotations

import pytest
import torch
from helpers import final_weights

import nestdsl
from nestdsl.errors import UserError
from nestdsl.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("fake_specs")


def test_load_run_gives_model_spec_config_and_state(tmp_path, our_cli, corpus_file, capsys):
    run = tmp_path / "run"
    argv = ["train", "toy", "--data", str(corpus_file), "--out", str(run), "--steps", "4",
            "--batch-size", "2", "--seq-len", "16", "--eval-every", "2", "--ckpt-every", "2",
            "--set", "dims.d_model=8", "--carry-state", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert our_cli(argv) == 0
    loaded = nestdsl.load_run(run)
    assert loaded.spec.d_model == 8  # the run's --set override applied to its saved spec
    assert (loaded.config.steps, loaded.config.carry_state) == (4, True)
    assert loaded.state["step"] == 4 and loaded.state["checkpoint"].name == "step-00000004"
    records = read_metrics(run / "metrics.jsonl")
    assert loaded.state["val_loss"] == [r["loss"] for r in records if r["kind"] == "val"][-1]
    assert set(loaded.state["memory"]) == {"memory", "seen"}  # the toy's carried state
    assert not loaded.model.training
    weights = final_weights(run)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    logits, _ = loaded.model(torch.tensor([list(b"KING")]), state=None)
    assert logits.shape == (1, 4, 256)


def test_load_run_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        nestdsl.load_run(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run folder"):
        nestdsl.load_run(tmp_path / "empty")
