"""A toy model following the compiled-model contract, for training tests without the compiler.

`logits, state = model(tokens, state=None)`: tokens `[B, T]` int64 bytes, logits `[B, T, 256]`,
state a flat dict of tensors. The model is an embedding, a causal linear-attention recurrence
whose `[B, d, d]` memory is the carried state (updated strictly one position at a time, so
feeding a sequence in pieces equals feeding it whole, bit for bit), an MLP and a head.

Also here: `toy_source` (a ModelSource around the toy) and `fake_load` / `fake_compile`, which
stand in for `nestdsl.load` / `nestdsl.compile` with a one-line "spec" format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from nestdsl.errors import SpecError
from nestdsl.train.config import ModelSource

VOCAB = 256


class ToyRecurrentLM(nn.Module):
    def __init__(self, d_model: int = 16, decay: float = 0.9, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model = d_model
        self.decay = decay
        self.embed = nn.Embedding(VOCAB, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, VOCAB)

    def forward(self, tokens: torch.Tensor, state: dict[str, torch.Tensor] | None = None):
        batch, length = tokens.shape
        x = self.embed(tokens)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        if state is None:
            memory = x.new_zeros(batch, self.d_model, self.d_model)
            seen = torch.zeros(batch, device=tokens.device)
        else:
            memory, seen = state["memory"], state["seen"]
        outputs = []
        for t in range(length):
            memory = self.decay * memory + k[:, t, :, None] * v[:, t, None, :]
            outputs.append(torch.einsum("bd,bde->be", q[:, t], memory) / self.d_model)
        x = x + self.dropout(torch.stack(outputs, dim=1))
        x = x + self.mlp(self.norm(x))
        return self.head(x), {"memory": memory, "seen": seen + length}


def toy_source(
    d_model: int = 16, optimizer: dict | None = None, dropout: float = 0.0
) -> ModelSource:
    return ModelSource(
        name="toy",
        spec_text=f"name: toy\nd_model: {d_model}\n",
        build=lambda: ToyRecurrentLM(d_model, dropout=dropout),
        optimizer=optimizer
        or {"kind": "adamw", "lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95]},
    )


# ----------------------------------------------------------------------------- fake spec loading


@dataclass
class FakeSpec:
    name: str
    source_text: str
    d_model: int
    optimizer: dict = field(
        default_factory=lambda: {"kind": "adamw", "lr": 3e-3, "weight_decay": 0.1}
    )

    @property
    def spec(self) -> SimpleNamespace:
        """What training reads of a CheckedSpec's `spec`: its levels, embedding and dims."""
        pretrain = SimpleNamespace(every="step", optimizer=_Dumped(self.optimizer))
        return SimpleNamespace(
            levels={"pretrain": pretrain}, embed=SimpleNamespace(vocab=VOCAB), dims={}
        )

    @property
    def source(self) -> SimpleNamespace:
        return SimpleNamespace(find=lambda path: None)


class _Dumped(dict):
    def model_dump(self, mode: str = "json") -> dict:  # noqa: ARG002 - pydantic's signature
        return dict(self)


def fake_load(name_or_path, overrides=None) -> FakeSpec:
    """Specs are "name: X / d_model: N [/ optimizer: m3]" texts; the shipped name "toy" is one."""
    path = Path(str(name_or_path))
    if path.exists():
        text = path.read_text()
    elif str(name_or_path) == "toy":
        text = "name: toy\nd_model: 16\n"
    else:
        raise SpecError([])  # real load reports diagnostics; an empty list is enough here
    values = dict(re.findall(r"^(\w+):\s*(\S+)\s*$", text, flags=re.M))
    d_model = int(values.get("d_model", 16))
    for override in overrides or []:
        key, _, value = override.partition("=")
        if key != "dims.d_model":
            raise SpecError([])
        d_model = int(value)
    spec = FakeSpec(name=values.get("name", "toy"), source_text=text, d_model=d_model)
    if values.get("optimizer") == "m3":
        spec.optimizer = {"kind": "m3", "lr": 1e-3}
    return spec


def fake_compile(spec: FakeSpec) -> ToyRecurrentLM:
    return ToyRecurrentLM(spec.d_model)
