"""`reset: never` in training: each batch starts from what the last one left in the memory
(continual learning across sequences), checkpointed and resumed exactly."""

from __future__ import annotations

import pytest
from helpers import assert_same_tensors, final_weights, interrupt_at, tiny_config
from safetensors.torch import load_file

from nestdsl.train import TrainingInterrupted, train
from nestdsl.train.config import spec_source

SMALL = ["dims.d_model=16", "dims.n_heads=2", "dims.d_head=8", "dims.d_ff=32", "dims.n_layers=1"]


def _source(reset: str):
    return spec_source("deltanet", [*SMALL, f"memories.M.reset={reset}"])


def test_never_reset_memory_carries_across_batches(tmp_path, corpus):
    config = tiny_config(steps=4, ckpt_every=4)
    kept = train(_source("never"), config, tmp_path / "never", corpus=corpus, progress=False)
    fresh = train(_source("sequence"), config, tmp_path / "seq", corpus=corpus, progress=False)
    del kept, fresh
    a, b = final_weights(tmp_path / "never"), final_weights(tmp_path / "seq")
    assert any(not (a[k] == b[k]).all() for k in a), "the carried memory changed nothing"
    saved = tmp_path / "never" / "checkpoints" / "step-00000004" / "memory.safetensors"
    memory = load_file(saved)
    assert any(k.endswith("layer.0.M.S") for k in memory)
    assert not (tmp_path / "seq" / "checkpoints" / "step-00000004" / "memory.safetensors").exists()


def test_never_reset_memory_resumes_exactly(tmp_path, monkeypatch, corpus):
    config = tiny_config()
    train(_source("never"), config, tmp_path / "whole", corpus=corpus, progress=False)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7)
        with pytest.raises(TrainingInterrupted):
            train(_source("never"), config, tmp_path / "pieces", corpus=corpus, progress=False)
    train(_source("never"), config, tmp_path / "pieces", resume=True, corpus=corpus,
          progress=False)  # fmt: skip
    assert_same_tensors(final_weights(tmp_path / "whole"), final_weights(tmp_path / "pieces"))
