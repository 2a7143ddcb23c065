"""One optimizer per outer level (issue 8): a spec with a block on an AdamW level, a block on an
M3 level and a frozen block trains each parameter by its own level's optimizer only, exactly as
the two torch optimizers run by hand would, and resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_tensors, final_weights, interrupt_at, tiny_config
from safetensors.torch import load_file

import nestdsl
from nestdsl.data.batches import ByteBatches
from nestdsl.data.corpus import split_corpus
from nestdsl.errors import UserError
from nestdsl.optim import M3, build_level_optimizers, build_optimizer
from nestdsl.train import TrainingInterrupted, spec_source, train
from nestdsl.train.distributed import seed_everything
from nestdsl.train.schedule import WarmupCosine

SPEC = Path(__file__).parent / "specs" / "two-outer-levels.yaml"
STEPS = 6


def settings():
    # No clipping: the hand-run reference below need not reproduce the clip's summation order.
    return tiny_config(steps=STEPS, grad_clip=0.0, warmup_steps=2)


def by_hand(corpus: bytes) -> dict[str, torch.Tensor]:
    """The same updates with torch.optim.AdamW on `fast` and M3 on `slow`, written out."""
    config = settings()
    seed_everything(config.seed)
    model = nestdsl.compile(nestdsl.load(SPEC))
    model.train()
    owner = model.parameter_levels()
    params = dict(model.named_parameters())

    def groups(level: str, decay: float) -> list[dict]:
        mine = [p for name, p in params.items() if owner[name] == level]
        return [{"params": [p for p in mine if p.ndim >= 2], "weight_decay": decay},
                {"params": [p for p in mine if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip

    fast = torch.optim.AdamW(groups("fast", 0.1), lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    slow = M3(groups("slow", 0.0), lr=1e-3, frequency=2, momentum_decay=0.9, variance_decay=0.99)
    schedule = WarmupCosine(1.0, config.warmup_steps, STEPS, config.min_lr_ratio)
    train_text = split_corpus(corpus, config.val_fraction).train
    batches = ByteBatches(train_text, split="train", batch_size=config.batch_size,
                          seq_len=config.seq_len, seed=config.seed)  # fmt: skip
    for step in range(STEPS):
        for optimizer, peak in ((fast, 3e-3), (slow, 1e-3)):
            for group in optimizer.param_groups:
                group["lr"] = peak * schedule.factor_at(step)
        batch = batches.batch(step)
        logits, _ = model(batch.inputs)  # [B, T, 256]
        loss = F.cross_entropy(logits.float().reshape(-1, 256), batch.targets.reshape(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
        fast.step()
        slow.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_each_level_owns_exactly_its_parameters():
    model = nestdsl.compile(nestdsl.load(SPEC))
    configs = spec_source(str(SPEC)).trained_levels()
    assert [(lv, c["kind"]) for lv, c in configs.items()] == [("fast", "adamw"), ("slow", "m3")]
    optimizers = build_level_optimizers(model, configs, build_optimizer).optimizers
    owner = model.parameter_levels()
    names = {id(p): n for n, p in model.named_parameters()}
    for level, optimizer in optimizers.items():
        mine = {names[id(p)] for g in optimizer.param_groups for p in g["params"]}
        assert mine == {n for n, lv in owner.items() if lv == level}
    assert isinstance(optimizers["fast"], torch.optim.AdamW) and isinstance(optimizers["slow"], M3)
    assert "layers.2.ops.p.proj.weight" not in {names[id(p)] for o in optimizers.values()
                                                for g in o.param_groups for p in g["params"]}  # fmt: skip


def test_two_outer_levels_train_as_their_optimizers_by_hand(tmp_path, corpus):
    result = train(spec_source(str(SPEC)), settings(), tmp_path / "run", corpus=corpus,
                   progress=False)  # fmt: skip
    trained = load_file(result.checkpoint / "model.safetensors")
    expected = by_hand(corpus)
    assert_same_tensors(trained, expected)
    seed_everything(0)
    initial = nestdsl.compile(nestdsl.load(SPEC)).state_dict()
    owner = nestdsl.compile(nestdsl.load(SPEC)).parameter_levels()
    for name, level in owner.items():
        moved = not torch.equal(trained[name], initial[name])
        assert moved == (level != "frozen"), f"{name} on level {level}"


def test_two_outer_levels_resume_exactly(tmp_path, monkeypatch, corpus):
    config = settings()
    whole = train(spec_source(str(SPEC)), config, tmp_path / "whole", corpus=corpus,
                  progress=False)  # fmt: skip
    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)  # the checkpoint at step 4 is the last one before
        with pytest.raises(TrainingInterrupted):
            train(spec_source(str(SPEC)), config, tmp_path / "pieces", corpus=corpus,
                  progress=False)  # fmt: skip
    resumed = train(spec_source(str(SPEC)), config, tmp_path / "pieces", resume=True,
                    corpus=corpus, progress=False)  # fmt: skip
    assert_same_tensors(final_weights(tmp_path / "pieces"), final_weights(tmp_path / "whole"))
    saved = load_file(resumed.checkpoint / "optimizer.safetensors")
    assert_same_tensors(saved, load_file(whole.checkpoint / "optimizer.safetensors"))
    assert {key.split("/")[0] for key in saved} == {"fast", "slow"}


def test_one_lr_flag_does_not_set_two_levels(tmp_path, corpus):
    with pytest.raises(UserError, match=r"--lr sets one peak rate.*--set levels.fast.optimizer.lr"):
        train(spec_source(str(SPEC)), tiny_config(lr=1e-2), tmp_path / "run", corpus=corpus,
              progress=False)  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_trained_level_that_owns_nothing_is_a_warning():
    text = SPEC.read_text().replace("level: slow", "level: fast")
    checked = nestdsl.check_text(text, "t.yaml")
    (warning,) = [w for w in checked.warnings if w.code == "unused-level"]
    assert "level `slow` trains nothing" in warning.message
    assert warning.pos.line == next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("  slow:"))
