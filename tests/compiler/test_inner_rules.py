"""Inner rules end to end. The in-context Muon rule (Atlas eq. 32): the docs example that swaps
Titans's momentum for Muon compiles, streams exactly, learns in context differently from
momentum, and trains. DGD with momentum (Hope's ablation) compiles and streams exactly."""

from __future__ import annotations

import math
from pathlib import Path

import torch

import nestdsl
from nestdsl.train import TrainConfig, spec_source, train
from nestdsl.train.metrics import read_metrics

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "titans-muon.yaml"
SMALL = ["dims.d_model=32", "dims.n_heads=2", "dims.d_head=16", "dims.n_layers=1", "dims.d_ff=64"]


def compiled(source=str(EXAMPLE)):
    torch.manual_seed(0)
    return nestdsl.compile(nestdsl.load(source, SMALL)).double()


def test_the_example_is_titans_with_only_the_rule_changed():
    muon, titans = nestdsl.load(str(EXAMPLE)).spec, nestdsl.load("titans-lmm").spec
    assert muon.memories["M"].rule.kind == "muon" and titans.memories["M"].rule.kind == "momentum"
    assert muon.blocks == titans.blocks and muon.levels == titans.levels


def test_streaming_in_pieces_equals_one_pass():
    model = compiled()
    tokens = torch.randint(0, 256, (2, 45), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model(tokens)
        state, parts = None, []
        for a, b in zip([0, 5, 20, 21, 37], [5, 20, 21, 37, 45]):  # inside and across chunks
            out, state = model(tokens[:, a:b], state)
            parts.append(out)
    err = (torch.cat(parts, 1) - whole).abs().max() / whole.abs().max()
    assert err < 1e-9, f"streaming differs from one pass by {err:.2e}"
    assert any(k.endswith(".S.0") for k in state), "the Muon momentum is part of the state"


def test_muon_updates_differ_from_momentum_and_reach_every_parameter():
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(2))
    muon = compiled()
    momentum = compiled("titans-lmm")
    momentum.load_state_dict(muon.state_dict())  # same weights: only the inner rule differs
    (a, sa), (b, sb) = muon(tokens), momentum(tokens)
    assert (a - b).abs().max() > 1e-6
    weights = [k for k in sa if k.endswith(".W.0")]
    assert weights and all((sa[k] - sb[k]).abs().max() > 1e-6 for k in weights)
    torch.nn.functional.cross_entropy(a.flatten(0, 1), tokens.flatten()).backward()
    trained = [(n, p) for n, p in muon.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trained)


def test_loss_falls_in_a_short_run(tmp_path):
    config = TrainConfig(steps=24, batch_size=4, seq_len=64, eval_every=24, eval_batches=2,
                         ckpt_every=24, log_every=1, seed=0, device="cpu", lr=1e-2)  # fmt: skip
    result = train(spec_source(str(EXAMPLE), SMALL), config, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl")
              if r["kind"] == "train"]  # fmt: skip
    assert len(losses) == 24 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3


def test_hope_with_dgd_momentum_streams_exactly_and_differs():
    """Hope's ablated momentum: `rule: {kind: dgd, momentum: ...}` on its memory compiles to
    dgd_momentum, streams exactly, and changes the outputs."""
    from .helpers import small_overrides

    base = small_overrides("hope")
    torch.manual_seed(0)
    plain = nestdsl.compile(nestdsl.load("hope", base)).double()
    torch.manual_seed(0)
    spec = nestdsl.load("hope", [*base, "memories.M_memory.rule.momentum=0.5"])
    model = nestdsl.compile(spec).double()
    model.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole, state = model(tokens)
        first, mid = model(tokens[:, :13])
        rest, _ = model(tokens[:, 13:], mid)
        assert (whole - plain(tokens)[0]).abs().max() > 1e-6
    err = (torch.cat([first, rest], 1) - whole).abs().max() / whole.abs().max()
    assert err < 1e-9, f"streaming differs by {err:.2e}"
    assert any("M_memory" in k and ".S." in k for k in state), "the momentum is carried"
