"""Generation in tokens that are not bytes: a token may end inside a UTF-8 character, and the
text still ends at a character boundary; the repetition penalty works on token ids."""

from __future__ import annotations

import torch

from nestdsl.data.tokenizer import Tokenizer
from nestdsl.train.generate import generate_text

EURO = "€".encode()  # e2 82 ac


class Pieces(Tokenizer):
    """A fixed vocabulary of byte strings; encodes by the longest piece first."""

    name = "pieces"

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.vocab_size = len(pieces)

    def encode(self, data: bytes) -> torch.Tensor:
        ids, at = [], 0
        order = sorted(range(len(self.pieces)), key=lambda i: -len(self.pieces[i]))
        while at < len(data):
            index = next(i for i in order if data.startswith(self.pieces[i], at))
            ids.append(index)
            at += len(self.pieces[index])
        return torch.tensor(ids, dtype=torch.int32)

    def decode(self, ids) -> bytes:
        return b"".join(self.pieces[int(i)] for i in ids)

    @property
    def token_bytes(self) -> torch.Tensor:
        return torch.tensor([len(p) for p in self.pieces])


TOKENS = Pieces([b"\n", b"x", b"ab", EURO[:2], EURO[2:], b"c"])


class Scripted(torch.nn.Module):
    """Writes the token ids of `script`, then repeats the last; records what it was fed."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.script, self.fed = script, []

    def forward(self, tokens, state=None):
        self.fed.append(tokens[0].tolist())
        done = 0 if state is None else int(state["done"]) + 1
        logits = torch.full((1, tokens.shape[1], TOKENS.vocab_size), -10.0)
        logits[0, -1, self.script[min(done, len(self.script) - 1)]] = 10.0
        return logits, {"done": torch.tensor(done)}


def test_a_token_that_ends_inside_a_character_is_finished():
    model = Scripted([2, 3, 4, 5])  # ab, e2 82, ac, c
    text = generate_text(model, b"xab", 2, TOKENS, temperature=0.0, whole_characters=True)
    assert text == b"ab" + EURO  # 2 tokens end inside the euro sign; a third finishes it
    assert model.fed == [[1, 2], [2], [3]]  # the prompt encoded once, then one token per call
    raw = generate_text(Scripted([2, 3, 4, 5]), b"x", 2, TOKENS, temperature=0.0)
    assert raw == b"ab" + EURO[:2]  # raw token text when whole characters are not asked for


def test_an_unfinished_character_is_dropped_after_three_more_tokens():
    model = Scripted([2, 3, 3])  # the euro's first two bytes forever
    text = generate_text(model, b"x", 2, TOKENS, temperature=0.0, whole_characters=True)
    assert text == b"ab" + EURO[:2] * 3  # 5 tokens written, the last one's 2 bytes dropped


def test_the_repetition_penalty_sees_token_ids():
    class Prefers(torch.nn.Module):
        def forward(self, tokens, state=None):  # always: "ab" a little likelier than "c"
            logits = torch.tensor([-9.0, -9.0, 2.0, -9.0, -9.0, 1.5]).expand(*tokens.shape, 6)
            return logits, {}

    assert generate_text(Prefers(), b"x", 3, TOKENS, temperature=0.0) == b"ababab"
    penalised = generate_text(Prefers(), b"x", 3, TOKENS, temperature=0.0, repetition_penalty=2.0)
    assert penalised == b"abcab"  # "ab" seen: 2.0 / 2 = 1.0 < 1.5; both seen: 1.0 > 0.75
