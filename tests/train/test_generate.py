"""Generation carries the in-context state and matches re-feeding the whole text."""

from __future__ import annotations

import pytest
import torch
from toymodel import ToyRecurrentLM

from nestdsl.errors import UserError
from nestdsl.train import generate_bytes
from nestdsl.train.generate import incomplete_tail, pick_next_byte

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


class Scripted(torch.nn.Module):
    """A 'model' that writes a fixed byte sequence, then repeats its last byte."""

    def __init__(self, script: bytes):
        super().__init__()
        self.script = script

    def forward(self, tokens, state=None):
        done = 0 if state is None else int(state["done"]) + 1
        byte = self.script[min(done, len(self.script) - 1)]
        logits = torch.full((1, tokens.shape[1], 256), -10.0)
        logits[0, -1, byte] = 10.0
        return logits, {"done": torch.tensor(done)}


def test_the_text_ends_at_a_character_boundary():
    accent = "é".encode()  # 2 bytes
    script = b"abc" + accent + "€".encode() + b"zz"  # "€" is 3 bytes: c3 a9 e2 82 ac
    model = Scripted(script)
    # 4 bytes end inside "é" (1 more byte finishes it), 6 inside "€" (2 more)
    assert generate_bytes(model, b"x", 4, temperature=0.0, whole_characters=True) == b"abc" + accent
    six = generate_bytes(model, b"x", 6, temperature=0.0, whole_characters=True)
    assert six.decode() == "abcé€"
    assert generate_bytes(model, b"x", 4, temperature=0.0) == script[:4]  # raw bytes when asked
    model = model_with_seed(3)  # an untrained model writes any byte, lead bytes included
    for seed in range(20):
        out = generate_bytes(model, b"x", 7, temperature=2.0, seed=seed, whole_characters=True)
        assert 7 <= len(out) <= 10 and incomplete_tail(out) == 0


def test_incomplete_tail():
    assert [incomplete_tail(b) for b in (b"", b"a", b"\xc3", b"\xc3\xa9", b"\xe2\x82", b"a\xf0\x9f\x98")] == [
        0, 0, 1, 0, 2, 3,
    ]  # fmt: skip


def test_top_p_keeps_the_smallest_likely_set():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    generator = torch.Generator().manual_seed(0)
    draw = lambda p: {pick_next_byte(logits, temperature=1.0, top_k=None, top_p=p,  # noqa: E731
                                     generator=generator) for _ in range(300)}  # fmt: skip
    assert draw(0.5) == {0}
    assert draw(0.7) == {0, 1}
    assert draw(0.9) == {0, 1, 2}
    assert draw(1.0) == {0, 1, 2, 3}


def test_repetition_penalty_moves_greedy_off_a_seen_byte():
    logits = torch.tensor([2.0, 1.9, -1.0, -1.2])
    seen = torch.tensor([True, False, False, True])
    generator = torch.Generator()
    pick = lambda r: pick_next_byte(logits, temperature=0.0, top_k=None, generator=generator,  # noqa: E731
                                    penalty=r, seen=seen)  # fmt: skip
    assert pick(1.0) == 0
    assert pick(1.1) == 1  # 2.0 / 1.1 < 1.9
    with pytest.raises(UserError, match="--repetition-penalty must be positive"):
        generate_bytes(model_with_seed(), PROMPT, 3, repetition_penalty=0.0)
    with pytest.raises(UserError, match="--top-p must be in"):
        generate_bytes(model_with_seed(), PROMPT, 3, top_p=1.5)


class Bigram(torch.nn.Module):
    """Next-byte logits from the last byte alone: a -> b -> a is the likeliest path."""

    def __init__(self):
        super().__init__()
        self.table = torch.full((256, 256), -5.0)
        for here, best, second in ((97, 98, 99), (98, 97, 100), (99, 100, 97), (100, 99, 98)):
            self.table[here, best], self.table[here, second] = 3.0, 2.5

    def forward(self, tokens, state=None):
        return self.table[tokens], {}  # [B, T, 256]


def test_greedy_decoding_loops_and_a_penalty_breaks_the_loop():
    """What the docs say of --temperature 0: greedy decoding follows the likeliest cycle."""
    greedy = generate_bytes(Bigram(), b"a", 8, temperature=0.0)
    assert greedy == b"babababa"
    penalised = generate_bytes(Bigram(), b"a", 8, temperature=0.0, repetition_penalty=1.5)
    assert penalised[:2] == b"bd" and penalised != greedy
