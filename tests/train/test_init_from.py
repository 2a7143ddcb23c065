"""`nestdsl train --init-from RUN [--init-map DEST=SRC]` (NL §7.3, nestdsl/train/init_from.py).

A tiny Transformer++ is trained; a spec whose feed-forward is a one-level CMS memory (a gated
MLP on a level every 16 tokens, initial state learned) starts from it. Same-name tensors are
copied exactly, the CMS memory's initial state is the Transformer's SwiGLU weights, and (the
paper's check: the CMS changes nothing before its first update) the new model's logits over
the first chunk are the Transformer's. Errors are one line; resuming does not reload RUN.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import final_weights, interrupt_at

import nestdsl
from nestdsl.cli import main
from nestdsl.train import TrainConfig
from nestdsl.train.config import TrainingInterrupted, spec_source
from nestdsl.train.init_from import fits, parse_maps
from nestdsl.train.loop import train

TINY = ["dims.d_model=16", "dims.n_heads=2", "dims.d_head=8", "dims.n_layers=2", "dims.d_ff=32"]
SETTINGS = "--batch-size 2 --seq-len 16 --eval-every 2 --ckpt-every 2 --device cpu --no-progress"
MAPS = [
    "layers.*.memories.C.initial.0=layers.*.ops.f.proj.weight",  # W_1: down, [D, h]
    "layers.*.memories.C.initial.1=layers.*.ops.a.proj.weight",  # W_2: gate (silu), [h, D]
    "layers.*.memories.C.initial.2=layers.*.ops.b.proj.weight",  # W_3: up, [h, D]
]

# transformer.yaml with its SwiGLU as a gated MLP memory on a level every 16 tokens.
CMS_SPEC = """\
nestdsl: 1
name: transformer-cms
dims: {vocab: 256, d_model: 16, n_heads: 2, d_head: 8, n_layers: 2}
levels:
  token: {every: 1}
  cms: {every: 16}
  pretrain: {every: step, optimizer: {kind: adamw, lr: 2.0e-3, weight_decay: 0.1}}
memories:
  A:
    structure: {kind: cache, heads: n_heads, key_dim: d_head, value_dim: d_head}
    level: token
    keys: k
    values: v
    objective: softmax
    reset: sequence
  C:
    structure: {kind: gated_mlp, dim: d_model, expansion: 2, residual: false, activation: silu}
    level: cms
    objective: task
    rule: {kind: gd, lr: 1.0e-2}
    init: {kind: learned}
    reset: sequence
embed: {vocab: vocab, dim: d_model}
blocks:
  - name: layer
    repeat: n_layers
    nodes:
      h:   {op: rmsnorm, in: x}
      q0:  {op: linear, in: h, out: [n_heads, d_head]}
      k0:  {op: linear, in: h, out: [n_heads, d_head]}
      v:   {op: linear, in: h, out: [n_heads, d_head]}
      q:   {op: rope, in: q0}
      k:   {op: rope, in: k0}
      o:   {op: read, memory: A, query: q}
      y:   {op: linear, in: o, out: d_model}
      x1:  {op: add, in: [x, y]}
      h2:  {op: rmsnorm, in: x1}
      f:   {op: read, memory: C, query: h2, order: chunk_start}
      x2:  {op: add, in: [x1, f]}
    out: x2
head: {norm: rmsnorm}
"""


def cli(*args: str) -> int:
    return main(list(args))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, corpus):
    """A tiny transformer trained for 4 updates, and the CMS spec file."""
    root = tmp_path_factory.mktemp("init_from")
    data = root / "corpus.txt"
    data.write_bytes(corpus)
    sets = [item for override in TINY for item in ("--set", override)]
    assert cli("train", "transformer", "--data", str(data), "--out", str(root / "tf"),
               "--steps", "4", *SETTINGS.split(), *sets) == 0  # fmt: skip
    spec = root / "transformer-cms.yaml"
    spec.write_text(CMS_SPEC)
    return root, data, spec


def start(root, data, spec, out, *more: str) -> int:
    return cli("train", str(spec), "--data", str(data), "--out", str(root / out),
               *SETTINGS.split(), *more)  # fmt: skip


def test_cms_run_starts_from_the_transformer(source_run, capsys):
    root, data, spec = source_run
    maps = [item for m in MAPS for item in ("--init-map", m)]
    assert start(root, data, spec, "cms", "--steps", "1", "--init-from", str(root / "tf"),
                 *maps) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "15 tensors copied, 6 mapped, 0 left fresh, 0 of the run's unused" in err
    record = json.loads((root / "cms" / "config.json").read_text())["init_from"]
    assert record["step"] == 4 and record["checkpoint"] == "step-00000004"
    assert record["run"] == str((root / "tf").resolve()) and record["map"] == MAPS
    assert record["mapped"]["layers.1.memories.C.initial.1"] == "layers.1.ops.a.proj.weight"


def _started(source_run, maps=MAPS):
    """The CMS model as train() starts it from the transformer run (no update taken)."""
    from nestdsl.train.init_from import init_from

    root, _, spec = source_run
    torch.manual_seed(0)
    model = nestdsl.compile(nestdsl.load(str(spec)))
    report = init_from(model, root / "tf", list(maps))
    return model, report


def test_copied_and_mapped_tensors_equal_the_source(source_run):
    root, _, _ = source_run
    model, report = _started(source_run)
    source = final_weights(root / "tf")
    state = model.state_dict()
    for name in report.copied:
        assert torch.equal(state[name], source[name]), name
    for layer in (0, 1):
        C = f"layers.{layer}.memories.C.initial"
        ops = f"layers.{layer}.ops"
        # The memory stores [H, out, in] and reads a @ W^T, as nn.Linear does: no transpose.
        assert torch.equal(state[f"{C}.0"][0], source[f"{ops}.f.proj.weight"])
        assert torch.equal(state[f"{C}.1"][0], source[f"{ops}.a.proj.weight"])
        assert torch.equal(state[f"{C}.2"][0], source[f"{ops}.b.proj.weight"])
    # The differential: the same spec built fresh starts elsewhere.
    torch.manual_seed(0)
    fresh = nestdsl.compile(nestdsl.load(str(source_run[2]))).state_dict()
    assert not torch.equal(fresh["embed.weight"], state["embed.weight"])
    assert not torch.equal(fresh["layers.0.memories.C.initial.1"][0],
                           state["layers.0.memories.C.initial.1"][0])  # fmt: skip


def test_before_its_first_update_the_cms_model_is_the_transformer(source_run):
    """NL §7.3: MLP_0 = MLP_pretrained, so until the CMS level's first update (its chunk of 16
    tokens) the new model computes the pre-trained one's function."""
    root, _, _ = source_run
    model, _ = _started(source_run)
    transformer = nestdsl.load_run(root / "tf").model
    tokens = torch.randint(0, 256, (2, 16))
    model.eval()
    with torch.no_grad():
        ours, _ = model(tokens)
        theirs, _ = transformer(tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the layouts matter: a transposed map would not compute this
        longer = torch.randint(0, 256, (2, 40))
        assert not torch.allclose(model(longer)[0][:, 16:], transformer(longer)[0][:, 16:])


def test_without_maps_only_same_names_are_copied(source_run):
    _, report = _started(source_run, maps=[])
    assert len(report.copied) == 15 and not report.mapped
    assert len(report.fresh) == 6 and len(report.unused) == 6  # the three SwiGLU matrices x 2


@pytest.mark.parametrize(
    "maps, message",
    [
        (["layers.*.memories.C.initial.0=layers.*.ops.a.proj.weight"],
         "layers.0.memories.C.initial.0 has shape [1, 16, 32] but layers.0.ops.a.proj.weight "
         "in"),
        (["layers.*.memories.D.initial.0=layers.*.ops.f.proj.weight"],
         "no tensor of the new model is named layers.*.memories.D.initial.0"),
        (["layers.*.memories.C.initial.0=layers.*.ops.g.proj.weight"],
         "layers.0.memories.C.initial.0 would come from layers.0.ops.g.proj.weight, which"),
        (["layers.*.memories.C.initial.0"], "expected DEST=SRC"),
        (["layers.*.memories.C.initial.0=layers.0.ops.f.proj.weight"], "`*` stands for"),
    ],
    ids=["shape", "unknown-dest", "unknown-src", "syntax", "stars"],
)
def test_map_errors_are_one_line(source_run, capsys, maps, message):
    root, data, spec = source_run
    args = [item for m in maps for item in ("--init-map", m)]
    assert start(root, data, spec, "bad", "--steps", "1", "--init-from", str(root / "tf"),
                 *args) != 0  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (root / "bad" / "checkpoints").exists()


def test_init_from_a_folder_without_checkpoints(tmp_path, source_run, capsys):
    root, data, spec = source_run
    assert start(root, data, spec, "none", "--init-from", str(tmp_path)) != 0
    assert "the run has no checkpoint to start from" in capsys.readouterr().err


def test_init_map_without_init_from_and_with_resume_are_refused(source_run, capsys):
    with pytest.raises(Exception, match="pass --init-from too"):
        TrainConfig(init_map=[MAPS[0]])
    root, data, spec = source_run
    assert start(root, data, spec, "tf", "--resume", "--init-from", str(root / "tf")) != 0
    assert "a resumed run already has its own" in capsys.readouterr().err


def test_resuming_a_run_started_from_another_is_exact(tmp_path, source_run, monkeypatch, corpus):
    """Stopped after 2 updates and resumed, the run ends where an unbroken one does; the resume
    restores its own checkpoint and never reads RUN again."""
    root, _, spec = source_run
    source = spec_source(str(spec))
    config = TrainConfig(steps=4, batch_size=2, seq_len=16, eval_every=2, ckpt_every=2,
                         eval_batches=2, device="cpu", init_from=str(root / "tf"),
                         init_map=list(MAPS))  # fmt: skip
    train(source, config, tmp_path / "whole", corpus=corpus, progress=False)
    interrupt_at(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        train(source, config, tmp_path / "split", corpus=corpus, progress=False)
    monkeypatch.undo()

    def refuse(*_args, **_kwargs):
        raise AssertionError("a resumed run must not reload --init-from")

    monkeypatch.setattr("nestdsl.train.loop.init_from", refuse)
    train(source, config, tmp_path / "split", resume=True, corpus=corpus, progress=False)
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    for name in whole:
        assert torch.equal(whole[name], split[name]), name
    record = json.loads((tmp_path / "split" / "config.json").read_text())
    assert record["init_from"]["step"] == 4  # kept on record through the resume


def test_shapes_fit_when_only_unit_dimensions_differ():
    assert fits((1, 16, 32), (16, 32)) and fits((16, 32), (16, 32))
    assert not fits((1, 32, 16), (16, 32)) and not fits((16, 32), (32,))
    assert parse_maps(["a.*.b=c.*.d"])[0].source_for("a.3.b.weight") == "c.3.d.weight"
    assert parse_maps(["a.*.b=c.*.d"])[0].source_for("a.3.bb") is None


def test_a_run_read_with_another_tokenizer_is_warned_about(source_run):
    from nestdsl.train.init_from import init_from

    root, _, spec = source_run
    model = nestdsl.compile(nestdsl.load(str(spec)))
    same = init_from(model, root / "tf", [], {"name": "bytes", "vocab": 256})
    assert same.tokenizer_differs is None and "warning" not in same.summary()
    other = init_from(model, root / "tf", [], {"name": "bpe:300", "vocab": 300, "sha256": "0"})
    assert "warning: the run read bytes" in other.summary()
