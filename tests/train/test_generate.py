"""Generation carries the in-context state and matches re-feeding the whole text."""

from __future__ import annotations

import pytest
import torch
from toymodel import ToyRecurrentLM

from nestdsl.errors import UserError
from nestdsl.train import generate_bytes
from nestdsl.train.generate import pick_next_byte

PROMPT = b"ROMEO:\nBut soft, what light"


def model_with_seed(seed: int = 0) -> ToyRecurrentLM:
    torch.manual_seed(seed)
    return ToyRecurrentLM(16).eval()


@torch.no_grad()
def greedy_by_refeeding(model, prompt: bytes, n: int) -> bytes:
    text = bytearray(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([list(text)]), state=None)
        text.append(int(torch.argmax(logits[0, -1])))
    return bytes(text[len(prompt) :])


class CallRecorder(torch.nn.Module):
    """Wraps a model and records the length of every input it is fed."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.lengths: list[int] = []

    def forward(self, tokens, state=None):
        self.lengths.append(tokens.shape[1])
        return self.model(tokens, state=state)


def test_carried_state_equals_refeeding_the_whole_text():
    model = model_with_seed()
    recorder = CallRecorder(model)
    carried = generate_bytes(recorder, PROMPT, 40, temperature=0.0)
    assert carried == greedy_by_refeeding(model, PROMPT, 40)
    assert recorder.lengths == [len(PROMPT)] + [1] * 39  # the prompt once, then one byte per call


def test_top_k_one_is_greedy_and_sampling_is_seeded():
    model = model_with_seed(1)
    greedy = generate_bytes(model, PROMPT, 25, temperature=0.0)
    assert generate_bytes(model, PROMPT, 25, temperature=1.3, top_k=1, seed=5) == greedy
    first = generate_bytes(model, PROMPT, 25, temperature=1.0, top_k=20, seed=3)
    assert generate_bytes(model, PROMPT, 25, temperature=1.0, top_k=20, seed=3) == first
    assert len(first) == 25


def test_top_k_restricts_the_choice():
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    generator = torch.Generator().manual_seed(0)
    picks = {
        pick_next_byte(logits, temperature=10.0, top_k=2, generator=generator) for _ in range(200)
    }
    assert picks == {1, 2}


def test_empty_prompt_and_zero_tokens():
    model = model_with_seed()
    assert generate_bytes(model, b"", 0) == b""
    assert len(generate_bytes(model, b"", 5, temperature=0.0)) == 5
    with pytest.raises(UserError, match="--top-k must be at least 1"):
        generate_bytes(model, PROMPT, 5, top_k=0)
