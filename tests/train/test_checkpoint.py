"""Checkpoints survive crashes mid-write, and bad or foreign checkpoints give clear UserErrors."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_same_tensors,
    comparable_metrics,
    fail_writing,
    final_weights,
    tiny_config,
)
from toymodel import ToyRecurrentLM, toy_source

import nestdsl.train.checkpoint as checkpoint
from nestdsl.errors import UserError
from nestdsl.train import train
from nestdsl.train.checkpoint import (
    CheckpointWriteError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_dirs,
)
from nestdsl.train.distributed import capture_rng

HERE = Path(__file__).parent


def test_disk_full_mid_write_keeps_last_good_checkpoint(tmp_path, monkeypatch, corpus):
    config = tiny_config()
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        fail_writing(patch, 8, OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(CheckpointWriteError) as caught:
            train(toy_source(), config, run, corpus=corpus, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert (
        "no space left on device" in message
        and "step-00000004" in message
        and "--resume" in message
    )
    assert latest_checkpoint(run / "checkpoints").name == "step-00000004"
    assert not list((run / "checkpoints").glob(".tmp-*"))  # nothing half-written left behind

    train(toy_source(), config, run, resume=True, corpus=corpus, progress=False)
    train(toy_source(), config, tmp_path / "whole", corpus=corpus, progress=False)
    assert comparable_metrics(run) == comparable_metrics(tmp_path / "whole")
    assert_same_tensors(final_weights(run), final_weights(tmp_path / "whole"))


def test_interrupt_mid_write_leaves_nothing_half_written(tmp_path, monkeypatch, corpus):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        fail_writing(patch, 8, KeyboardInterrupt())
        with pytest.raises(
            UserError, match="interrupted at step 8; the last checkpoint is .*step-00000004"
        ):
            train(toy_source(), tiny_config(), run, corpus=corpus, progress=False)
    assert [p.name for p in step_dirs(run / "checkpoints")] == ["step-00000004"]
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_sigkill_mid_write_then_resume(tmp_path, corpus_file):
    run = tmp_path / "run"
    command = [sys.executable, str(HERE / "entry.py"), str(run), "--data", str(corpus_file)]
    killed = subprocess.run(
        command + ["--kill-in-checkpoint", "8"], capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoints = run / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step-00000004"
    assert list(checkpoints.glob(".tmp-step-00000008-*"))  # the torn save, ignored
    load_checkpoint(latest_checkpoint(checkpoints), ToyRecurrentLM(16))

    config = tiny_config(data=str(corpus_file))
    train(toy_source(), config, run, resume=True, progress=False)
    assert not list(checkpoints.glob(".tmp-*"))
    train(toy_source(), config, tmp_path / "whole", progress=False)
    assert comparable_metrics(run) == comparable_metrics(tmp_path / "whole")
    assert_same_tensors(final_weights(run), final_weights(tmp_path / "whole"))


@pytest.fixture
def finished_run(tmp_path, corpus) -> Path:
    run = tmp_path / "run"
    train(toy_source(), tiny_config(steps=4), run, corpus=corpus, progress=False)
    return run


def test_corrupt_weights_are_detected(finished_run, corpus):
    weights = finished_run / "checkpoints" / "step-00000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        UserError, match="corrupt: model.safetensors does not match its recorded checksum"
    ):
        train(
            toy_source(),
            tiny_config(steps=8),
            finished_run,
            resume=True,
            corpus=corpus,
            progress=False,
        )


def test_corrupt_meta_and_pointer_are_detected(finished_run):
    step = finished_run / "checkpoints" / "step-00000004"
    (step / "meta.json").write_text('{"format": "nestdsl-chec')
    with pytest.raises(UserError, match="meta.json is not valid JSON"):
        load_checkpoint(step, ToyRecurrentLM(16))
    (finished_run / "checkpoints" / "latest").write_text("garbage")
    with pytest.raises(UserError, match="pointer .* is corrupt"):
        latest_checkpoint(finished_run / "checkpoints")
    (finished_run / "checkpoints" / "latest").write_text("step-00000099")
    with pytest.raises(UserError, match="names step-00000099, which does not exist"):
        latest_checkpoint(finished_run / "checkpoints")


def test_truncated_safetensors_is_detected(finished_run):
    step = finished_run / "checkpoints" / "step-00000004"
    meta = json.loads((step / "meta.json").read_text())
    (step / "rng.safetensors").write_bytes(b"\x10\x00")
    meta["files"]["rng.safetensors"] = checkpoint._sha256(
        b"\x10\x00"
    )  # a consistent-looking torn file
    (step / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="rng.safetensors is not valid safetensors"):
        load_checkpoint(step, ToyRecurrentLM(16))


def test_checkpoint_of_other_shapes_names_the_difference(finished_run):
    step = finished_run / "checkpoints" / "step-00000004"
    with pytest.raises(
        UserError,
        match=r"embed.weight has shape \[256, 16\] float32 in the checkpoint, \[256, 32\]",
    ):
        load_checkpoint(step, ToyRecurrentLM(32))


def test_checkpoint_of_another_spec_is_refused(finished_run, corpus):
    other = toy_source()
    other.spec_text += "# edited\n"
    with pytest.raises(UserError, match="text of spec 'toy' differs"):
        train(other, tiny_config(steps=8), finished_run, resume=True, corpus=corpus, progress=False)
    renamed = toy_source()
    renamed.name = "hope"
    with pytest.raises(UserError, match="trained from spec 'toy', not 'hope'"):
        train(
            renamed, tiny_config(steps=8), finished_run, resume=True, corpus=corpus, progress=False
        )


def test_keeps_the_last_n_and_tied_weights_round_trip(tmp_path):
    model = ToyRecurrentLM(8)
    model.head.weight = model.embed.weight  # tied: stored once, restored to both names
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 3, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    root = tmp_path / "checkpoints"
    rng = [capture_rng()]
    for step in (1, 2, 3, 4):
        save_checkpoint(
            root,
            step=step,
            model=model,
            optimizer=optimizer,
            rng_states=rng,
            memory_states=None,
            extra={},
            keep=2,
        )
    assert [p.name for p in step_dirs(root)] == ["step-00000003", "step-00000004"]
    restored = ToyRecurrentLM(8)
    restored.head.weight = restored.embed.weight
    loaded = load_checkpoint(
        latest_checkpoint(root), restored, torch.optim.AdamW(restored.parameters())
    )
    assert loaded.step == 4 and loaded.meta["aliases"] == {"head.weight": "embed.weight"}
    assert_same_tensors(restored.state_dict(), model.state_dict())


def test_a_one_optimizer_checkpoint_of_earlier_versions_still_loads(tmp_path):
    """Earlier checkpoints held one optimizer: meta "optimizer", tensors "<index>/<name>"."""
    from safetensors.torch import load_file, save_file

    from nestdsl.optim import LevelOptimizers

    model = ToyRecurrentLM(8)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 3, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer,
                           rng_states=[capture_rng()], memory_states=None, extra={}, keep=1)  # fmt: skip
    meta = json.loads((path / "meta.json").read_text())
    ((level, info),) = meta.pop("optimizers").items()
    meta["optimizer"] = info
    tensors = {k.split("/", 1)[1]: v for k, v in load_file(path / "optimizer.safetensors").items()}
    save_file(tensors, path / "optimizer.safetensors")
    meta["files"]["optimizer.safetensors"] = checkpoint._sha256((path / "optimizer.safetensors").read_bytes())
    (path / "meta.json").write_text(json.dumps(meta))

    restored = ToyRecurrentLM(8)
    fresh = torch.optim.AdamW(restored.parameters())
    load_checkpoint(path, restored, LevelOptimizers({"pretrain": fresh}, {"pretrain": 1e-3}))
    state = fresh.state_dict()["state"]
    assert level == "outer" and state and all(int(s["step"]) == 1 for s in state.values())
    assert torch.equal(state[0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
