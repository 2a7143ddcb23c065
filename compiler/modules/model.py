"""The compiled model: embedding, layers, head; `model(tokens, state) -> (logits, state)`.

The state is a flat `dict[str, Tensor]` holding every in-context memory (and the short
convolutions' last inputs) plus `pos`, the number of tokens seen; feeding a sequence in pieces
and carrying the state gives the same logits as feeding it whole.
"""

from __future__ import annotations

import torch
from torch import nn

from nestdsl.compiler.modules.layer import Layer
from nestdsl.compiler.modules.ops import LayerNorm, RMSNorm, Stream


class CompiledModel(nn.Module):
    def __init__(self, plan):
        super().__init__()
        self.spec_name = plan.spec.name
        self.vocab, self.d_model = plan.vocab, plan.d_model
        self.embed = nn.Embedding(plan.vocab, plan.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(Layer(plan, layer) for layer in plan.layers)
        head = plan.spec.head
        self.norm = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}.get(head.norm, nn.Identity)(
            plan.d_model
        ) if head.norm != "none" else nn.Identity()  # fmt: skip
        self.tied = head.tied
        if not self.tied:
            self.head = nn.Linear(plan.d_model, plan.vocab, bias=False)
            nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, state: dict[str, torch.Tensor] | None = None):
        """tokens `[B, T]` int64 -> logits `[B, T, vocab]` and the state after the last token."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        state = dict(state or {})
        pos = int(state.pop("pos", torch.tensor(0)).item())
        stream = Stream(pos, state)
        x = self.embed(tokens)  # [B, T, D]
        for layer in self.layers:
            x = layer(x, stream)
        x = self.norm(x)
        logits = x @ self.embed.weight.T if self.tied else self.head(x)  # [B, T, V]
        new_state = {**state, **stream.new_state}
        new_state = {k: v for k, v in new_state.items() if v is not None}
        new_state["pos"] = torch.tensor(pos + tokens.shape[1])
        return logits, new_state
