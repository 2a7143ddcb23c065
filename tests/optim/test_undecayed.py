"""Weight decay leaves the initial states of normed memories alone (compiler/modules/model.py,
`undecayed_parameters`): their output norm makes the loss blind to their scale, so decay would
shrink them unopposed into the range where the inner step is unstable."""

from __future__ import annotations

import torch

import nestdsl
from nestdsl.optim import build_level_optimizers, build_optimizer
from nestdsl.train import spec_source

SMALL = ["dims.d_model=32", "dims.n_heads=2", "dims.d_head=16"]


def compiled(name: str):
    torch.manual_seed(0)
    return nestdsl.compile(nestdsl.load(name, SMALL))


def decay_of(model) -> dict[str, float]:
    """Parameter name -> the weight decay its optimizer group applies."""
    configs = spec_source(model.spec_name).trained_levels()
    names = {id(p): n for n, p in model.named_parameters()}
    optimizers = build_level_optimizers(model, configs, build_optimizer).optimizers
    return {names[id(p)]: g["weight_decay"] for o in optimizers.values()
            for g in o.param_groups for p in g["params"]}  # fmt: skip


def test_normed_memory_initial_states_are_not_decayed_and_other_matrices_are():
    model = compiled("titans-lmm")
    decay = decay_of(model)
    initial = {n for n in decay if ".memories.M.initial." in n}
    assert len(initial) == 4 and initial == model.undecayed_parameters()
    assert all(decay[n] == 0.0 for n in initial)
    matrices = [n for n, p in model.named_parameters() if p.ndim >= 2 and n not in initial]
    assert matrices and all(decay[n] == 0.1 for n in matrices)


def test_memories_without_an_output_norm_keep_their_decay():
    model = compiled("hope")
    decay = decay_of(model)
    normed = model.undecayed_parameters()
    assert normed and all(".M_memory.initial." in n for n in normed)
    unnormed = [n for n in decay if ".initial." in n and ".M_memory." not in n]
    assert unnormed and all(decay[n] == 0.1 for n in unnormed)  # M_k..M_alpha and the CMS
    assert compiled("transformer").undecayed_parameters() == set()


def test_a_decay_step_shrinks_the_weights_but_not_the_normed_initial_state():
    model = compiled("titans-lmm")
    optimizer = build_optimizer(model.named_parameters(),
                                {"kind": "adamw", "lr": 1.0, "weight_decay": 0.5},
                                model.undecayed_parameters())  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # a step of decay alone
    optimizer.step()
    after = dict(model.named_parameters())
    state = "layers.0.memories.M.initial.1"
    weight = "layers.0.ops.q.proj.weight"
    assert torch.equal(after[state], before[state])
    torch.testing.assert_close(after[weight], before[weight] * 0.5)

