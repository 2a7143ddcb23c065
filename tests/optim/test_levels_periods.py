"""Outer levels every k steps, a schedule per level, state round trips, and training (issue 12).

A level with `period: k` sums k steps of gradient and updates once (NL's frequency ordering);
a level with its own `schedule` scales its peak by its own curve. Both live in the optimizer's
param groups and state, so a state_dict (and a checkpoint) taken mid-run continues exactly.
A spec with two outer levels on different optimizers and periods trains and resumes bit for
bit, and Hope trains with DMGD from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nestdsl
from nestdsl.cli import main
from nestdsl.data import load_corpus
from nestdsl.optim import LevelOptimizers, build_optimizer, shipped_optimizers
from nestdsl.train import TrainConfig, TrainingInterrupted, spec_source, train
from nestdsl.train.optimizer_state import load_optimizer_state, optimizer_state
from tests.train.helpers import interrupt_at

TWO_LEVELS = Path(__file__).parents[1] / "train" / "specs" / "two-outer-levels.yaml"


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()


def steps(net: torch.nn.Module, opt, first: int, last: int) -> None:
    for step in range(first, last):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("name", ["sgd-momentum", "adamw", "delta-momentum", "m3", "dmgd"])
@pytest.mark.parametrize("options", [{}, {"period": 2, "schedule": {"kind": "warmup_cosine",
                         "warmup": 1, "total": 4, "min_ratio": 0.2}}], ids=["plain", "period"])  # fmt: skip
def test_state_round_trip_mid_run_continues_identically(name, options):
    settings = {"lr": 0.01, "frequency": 2} if name == "m3" else {"lr": 0.01}
    whole = model()
    opt = nestdsl.optimizer(name, whole.parameters(), **settings, **options)
    steps(whole, opt, 0, 10)
    part = model()
    first = nestdsl.optimizer(name, part.parameters(), **settings, **options)
    steps(part, first, 0, 5)
    # Through the checkpoint format: safetensors-able tensors and JSON for the rest.
    tensors, infos = optimizer_state(first)
    infos = json.loads(json.dumps(infos))
    fresh = nestdsl.optimizer(name, part.parameters(), **settings, **options)
    load_optimizer_state(Path("<test>"), fresh, tensors, {"optimizers": infos})
    steps(part, fresh, 5, 10)
    for a, b in zip(whole.parameters(), part.parameters(), strict=True):
        assert torch.equal(a, b)
    assert callable(nestdsl.optimizer)  # the public name survives its use
    assert name in shipped_optimizers()


def test_a_slower_level_sums_its_period_of_gradients_then_updates_once():
    slow_net, ref_net = model(), model()
    slow = build_optimizer(slow_net.parameters(), {"kind": "adamw", "lr": 0.01, "period": 3})
    ref = build_optimizer(ref_net.parameters(), {"kind": "memories", "lr": 0.01, "weight_decay": 0.1,
                          **_adamw_body()})  # fmt: skip
    before = [p.detach().clone() for p in slow_net.parameters()]
    grads = []
    for step in range(3):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
        slow.zero_grad()
        slow_net(x).square().mean().backward()
        grads.append([p.grad.clone() for p in slow_net.parameters()])
        slow.step()
        moved = any(
            not torch.equal(a, b) for a, b in zip(before, slow_net.parameters(), strict=True)
        )
        assert moved == (step == 2), f"step {step}"
    for p, *gs in zip(ref_net.parameters(), *grads, strict=True):
        p.grad = sum(gs)
    ref.step()
    for a, b in zip(slow_net.parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _adamw_body() -> dict:
    from nestdsl.optim import read_declaration

    return read_declaration("adamw").model_dump(
        mode="json", include={"settings", "memories", "update"}
    )


def test_a_level_with_its_own_schedule_ignores_the_runs_factor():
    net = model()
    own = build_optimizer(net.parameters(), {"kind": "sgd_momentum", "lr": 0.1,
                          "schedule": {"kind": "constant", "warmup": 2}})  # fmt: skip
    run = build_optimizer(net.parameters(), {"kind": "sgd_momentum", "lr": 0.1})
    levels = LevelOptimizers({"own": own, "run": run}, {"own": 0.1, "run": 0.1})
    levels.set_lr_factor(0.5)
    assert own.param_groups[0]["lr"] == 0.1 and run.param_groups[0]["lr"] == 0.05
    # Warmup over the level's own updates: 0.05, then the full 0.1.
    p = net[0].bias
    for expected in (0.05, 0.1):
        before = p.detach().clone()
        own.zero_grad()
        p.grad = torch.ones_like(p)
        momentum = own.state[p]["momentum_buffer"].clone() if own.state[p] else torch.zeros_like(p)
        own.step()
        torch.testing.assert_close(before - p.detach(), expected * (0.9 * momentum + 1.0))


# ---------------------------------------------------------------- training through `train`

SPEC_TEXT = TWO_LEVELS.read_text().replace(
    "optimizer: {kind: m3, lr: 1.0e-3, frequency: 2, momentum_decay: 0.9, variance_decay: 0.99}",
    "optimizer: {kind: dmgd, lr: 1.0e-3, period: 2, schedule: {kind: constant, warmup: 2}}",
)


def _final(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return {**load_file(run / "checkpoints" / latest / "model.safetensors"),
            **load_file(run / "checkpoints" / latest / "optimizer.safetensors")}  # fmt: skip


@pytest.mark.slow  # three short runs: about 20 s on 2 cores
def test_two_outer_levels_with_periods_train_and_resume_exactly(tmp_path, monkeypatch):
    assert "kind: dmgd" in SPEC_TEXT
    spec = tmp_path / "levels.yaml"
    spec.write_text(SPEC_TEXT)
    corpus = load_corpus()[:20_000]
    config = TrainConfig(steps=8, batch_size=2, seq_len=16, eval_every=4, ckpt_every=4,
                         log_every=2, eval_batches=1, warmup_steps=2, device="cpu")  # fmt: skip
    train(spec_source(str(spec)), config, tmp_path / "whole", corpus=corpus, progress=False)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 6)  # the checkpoint at step 4 is the last one before
        with pytest.raises(TrainingInterrupted):
            train(
                spec_source(str(spec)), config, tmp_path / "pieces", corpus=corpus, progress=False
            )
    train(spec_source(str(spec)), config, tmp_path / "pieces", resume=True, corpus=corpus,
          progress=False)  # fmt: skip
    whole, pieces = _final(tmp_path / "whole"), _final(tmp_path / "pieces")
    assert whole.keys() == pieces.keys()
    assert {k.split("/")[0] for k in whole if "/" in k} == {"fast", "slow"}
    assert any(k.endswith("momentum.W1") for k in whole)  # DMGD's MLP is in the checkpoint
    for key in whole:
        assert torch.equal(whole[key], pieces[key]), key


@pytest.mark.slow  # Hope's sequential segments: about 15 s on 2 cores
def test_hope_trains_with_dmgd_from_the_command_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(load_corpus()[:20_000])
    args = ["train", "hope", "--set", "levels.pretrain.optimizer.kind=dmgd",
            "--set", "dims.d_model=16", "--set", "dims.n_heads=2", "--set", "dims.d_head=8",
            "--set", "dims.n_layers=1", "--steps", "2", "--batch-size", "1", "--seq-len", "64",
            "--data", str(corpus), "--out", str(tmp_path / "run"), "--no-progress",
            "--eval-every", "2", "--ckpt-every", "2"]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["optimizers"]["pretrain"]
    assert saved["kind"] == "dmgd" and saved["lr"] == 2e-3  # hope's lr, DMGD's other defaults
    tensors = _final(tmp_path / "run")
    assert any(k.startswith("pretrain/") and k.endswith("momentum.W2") for k in tensors)
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())


def test_show_lists_each_outer_levels_period_and_optimizer(tmp_path, capsys):
    spec = tmp_path / "levels.yaml"
    spec.write_text(SPEC_TEXT.replace("period: 2,", "period: 4,"))
    assert main(["show", str(spec)]) == 0
    out = capsys.readouterr().out
    table = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha()}
    assert table["slow"].split()[1:4] == ["4", "steps", "block"]  # every, members
    assert "feed_forward" in table["slow"] and "fixed" in table["frozen"]
    rows = out.split("optimizers (")[1].splitlines()[1:]
    assert rows[0].split()[0] == "fast" and "adamw, lr 0.003; the run's schedule" in rows[0]
    assert rows[0].endswith("memories: exp_avg (elementwise), exp_avg_sq (elementwise)")
    assert rows[1].split()[0] == "slow"
    assert "dmgd, lr 0.001; every 4 steps (sums their gradients); own schedule constant" in rows[1]
    assert rows[1].endswith("memories: momentum (mlp)")
    # The faster outer level is listed first in the table too.
    order = [
        line.split()[0] for line in out.splitlines() if line.split()[:1] in (["fast"], ["slow"])
    ]
    assert order[:2] == ["fast", "slow"]
