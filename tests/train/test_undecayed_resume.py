"""A run checkpointed while normed memories' initial states were still decayed (before
`undecayed_parameters`, tests/optim/test_undecayed.py) resumes exactly, keeping its grouping."""

from __future__ import annotations

import pytest
from helpers import assert_same_tensors, final_weights, interrupt_at, tiny_config

from nestdsl.compiler.modules.model import CompiledModel
from nestdsl.train import TrainingInterrupted, spec_source, train

SMALL = ["dims.d_model=32", "dims.n_heads=2", "dims.d_head=16"]


def test_a_run_checkpointed_with_its_initial_states_decayed_resumes_exactly(
    tmp_path, monkeypatch, corpus
):
    source = spec_source("titans-lmm", overrides=SMALL)
    config = tiny_config(steps=6)
    with monkeypatch.context() as patch:  # the code before the rule: everything decayed
        patch.setattr(CompiledModel, "undecayed_parameters", lambda self: set())
        train(source, config, tmp_path / "whole", corpus=corpus, progress=False)
        interrupt_at(patch, 5)  # the checkpoint at step 4 is the last one before
        with pytest.raises(TrainingInterrupted):
            train(source, config, tmp_path / "pieces", corpus=corpus, progress=False)
    train(source, config, tmp_path / "pieces", resume=True, corpus=corpus, progress=False)
    assert_same_tensors(final_weights(tmp_path / "pieces"), final_weights(tmp_path / "whole"))


def test_a_new_run_does_not_decay_them_and_resumes_exactly(tmp_path, monkeypatch, corpus):
    source = spec_source("titans-lmm", overrides=SMALL)
    config = tiny_config(steps=6)
    train(source, config, tmp_path / "whole", corpus=corpus, progress=False)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)
        with pytest.raises(TrainingInterrupted):
            train(source, config, tmp_path / "pieces", corpus=corpus, progress=False)
    train(source, config, tmp_path / "pieces", resume=True, corpus=corpus, progress=False)
    assert_same_tensors(final_weights(tmp_path / "pieces"), final_weights(tmp_path / "whole"))
