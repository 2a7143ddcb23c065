"""The declared SGD-momentum and AdamW equal torch's step for step (issue 12).

A real small model (embedding, two linear layers with biases, a LayerNorm) in float64 trains
100 steps on fixed random batches twice from the same weights: once with the optimizer written
as memories of the gradients (specs/optimizers/*.yaml through `nestdsl.optimizer`), once with
torch's. Every parameter must agree to 1e-6 relative after every step.
"""

from __future__ import annotations

import pytest
import torch

import nestdsl

STEPS = 100


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.hidden = torch.nn.Linear(8, 12)
        self.norm = torch.nn.LayerNorm(12)
        self.out = torch.nn.Linear(12, 11)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden(self.embed(tokens)))  # [B, T, 12]
        return self.out(self.norm(h))  # [B, T, 11]


def twins() -> tuple[Tiny, Tiny]:
    torch.manual_seed(0)
    first = Tiny().double()
    second = Tiny().double()
    second.load_state_dict(first.state_dict())
    return first, second


def loss_of(model: Tiny, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 11, (4, 9), generator=generator)
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1))


def assert_close_every_step(ours_opt, ours: Tiny, theirs_opt, theirs: Tiny) -> None:
    worst = 0.0
    for step in range(STEPS):
        for opt, model in ((ours_opt, ours), (theirs_opt, theirs)):
            opt.zero_grad()
            loss_of(model, step).backward()
            opt.step()
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            scale = b.detach().abs().max().clamp_min(1e-12)
            error = float((a.detach() - b.detach()).abs().max() / scale)
            worst = max(worst, error)
            assert error < 1e-6, f"{name} differs by {error:.2e} (relative) at step {step}"
    # The run moved the weights far beyond the tolerance: the comparison is not vacuous.
    start = twins()[0]
    moved = max(float((a - b).detach().abs().max())
                for a, b in zip(ours.parameters(), start.parameters(), strict=True))
    assert moved > 1e-2
    assert worst < 1e-6


@pytest.mark.parametrize(
    ("momentum", "weight_decay"), [(0.9, 0.0), (0.5, 1e-2)], ids=["plain", "weight-decay"]
)
def test_sgd_momentum_equals_torch_sgd(momentum, weight_decay):
    ours, theirs = twins()
    mine = nestdsl.optimizer(
        "sgd-momentum", ours.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    torch_sgd = torch.optim.SGD(
        theirs.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    assert isinstance(mine, torch.optim.Optimizer) and not isinstance(mine, torch.optim.SGD)
    assert_close_every_step(mine, ours, torch_sgd, theirs)


@pytest.mark.parametrize(
    ("betas", "weight_decay"), [((0.9, 0.999), 0.01), ((0.5, 0.9), 0.3)], ids=["torch", "other"]
)
def test_adamw_equals_torch_adamw(betas, weight_decay):
    ours, theirs = twins()
    mine = nestdsl.optimizer(
        "adamw", ours.parameters(), lr=1e-2, betas=betas, weight_decay=weight_decay, eps=1e-8
    )
    torch_adamw = torch.optim.AdamW(
        theirs.parameters(), lr=1e-2, betas=betas, weight_decay=weight_decay, eps=1e-8
    )
    assert not isinstance(mine, torch.optim.AdamW)
    assert_close_every_step(mine, ours, torch_adamw, theirs)


def test_a_changed_setting_in_a_group_takes_effect():
    """Settings live in the param groups, as in torch: changing one is read at the next step."""
    ours, theirs = twins()
    mine = nestdsl.optimizer("sgd-momentum", ours.parameters(), lr=0.05, momentum=0.9)
    torch_sgd = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    for step in range(6):
        if step == 3:
            for opt in (mine, torch_sgd):
                opt.param_groups[0]["momentum"] = 0.2
                opt.param_groups[0]["lr"] = 0.01
        for opt, model in ((mine, ours), (torch_sgd, theirs)):
            opt.zero_grad()
            loss_of(model, step).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
