"""Needle-in-a-haystack rows at byte level: a needle sentence hidden in real text, then a query.

The data of the `needle` task (needle.py). It follows the single-needle tasks of RULER (Hsieh
et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language Models?",
S-NIAH-1/2/3, the tasks of NL-arXiv Table 1 and Titans §5.4), with the pass-key format of
Mohtashami & Jaggi 2023 ("Landmark Attention", §4.2), shortened for byte-level models:

    ...real text... The pass key is 48213. ...real text...\nThe pass key is 48213
                    <------ needle ------>                  <-- query --><answer>

* three kinds of needle, each a sentence with a value and a query that asks for it back:

  | kind      | needle sentence                       | query                        | answer |
  | `passkey` | `The pass key is 48213. `             | `\nThe pass key is `         | 5 digits |
  | `number`  | `The magic number for bird is 4821937. ` | `\nThe magic number for bird is ` | 7 digits |
  | `uuid`    | `The uuid for bird is 1b4e28ba-2fa1-4d2b-883f-0016d3cca427. ` | `\nThe uuid for bird is ` | 36 bytes |

  (RULER's S-NIAH-1 asks for a number by a fixed phrase, S-NIAH-2 for a 7-digit number by a
  key word, S-NIAH-3 for a UUID by a key word; keys here come from `KEY_WORDS`);
* a row is `L + 1` bytes of text: the haystack (a slice of the corpus at a random offset) with
  the needle inserted at depth `d` (0 = first byte, 1 = just before the query), then the query
  and the answer. The insertion point `round(d * h)` (h haystack bytes) moves back to the start
  of its word (after a space or newline), by at most `SNAP` bytes, so the needle is a sentence
  between words as in RULER rather than a cut through a word;
* inputs are the first `L` bytes, labels the next byte at each position where that byte is an
  answer byte and `IGNORE` elsewhere, so exactly the answer bytes are scored.

Rows are a pure function of (text, length, depth, kind, seed): `random.Random(seed)` draws the
offset, key and value, the same on every machine. Training rows take their haystack from the
training part of a corpus and test rows from its validation part (disjoint, see corpus.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from nestdsl.errors import UserError
from nestdsl.eval.mqar import IGNORE

KINDS = ("passkey", "number", "uuid")
# Short common nouns, so a key costs few bytes of a short row (RULER draws random words).
KEY_WORDS = (
    "apple", "bird", "boat", "bread", "cloud", "coin", "door", "fish", "flame", "glass", "hill",
    "horse", "lamp", "leaf", "moon", "river", "rose", "salt", "ship", "stone", "sword", "tree",
    "wheel", "wolf",
)  # fmt: skip
SNAP = 16  # the furthest an insertion point moves back to reach the start of a word
_SPACE = b" \n\t\r"


@dataclass(frozen=True)
class Needle:
    """One needle: the sentence hidden in the haystack, the query at the end, the answer."""

    kind: str
    sentence: bytes
    query: bytes
    answer: bytes

    @property
    def overhead(self) -> int:
        """Bytes of a row that are not haystack."""
        return len(self.sentence) + len(self.query) + len(self.answer)


@dataclass(frozen=True)
class NeedleRow:
    """One row: its text (`L + 1` bytes) and where its parts lie."""

    text: bytes
    needle: Needle
    offset: int  # where the haystack starts in the source text
    haystack: int  # haystack bytes in the row
    start: int  # the byte where the needle sentence starts in the row

    @property
    def answer_start(self) -> int:
        return len(self.text) - len(self.needle.answer)


def _uuid(rng: random.Random) -> str:
    """A version-4 UUID (RFC 4122 layout) drawn from `rng` (uuid.uuid4 reads the OS instead)."""
    digits = [f"{rng.getrandbits(4):x}" for _ in range(32)]
    digits[12] = "4"  # the version nibble
    digits[16] = "89ab"[rng.getrandbits(2)]  # the variant bits 10xx
    h = "".join(digits)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _format(kind: str, key: str, value: str) -> Needle:
    """The needle of `kind` that hides `value` (under `key`, for the kinds that have one)."""
    if kind == "passkey":
        sentence, query = f"The pass key is {value}. ", "\nThe pass key is "
    elif kind == "number":
        sentence = f"The magic number for {key} is {value}. "
        query = f"\nThe magic number for {key} is "
    elif kind == "uuid":
        sentence, query = f"The uuid for {key} is {value}. ", f"\nThe uuid for {key} is "
    else:
        raise UserError(f"needle: unknown needle kind `{kind}`; known: {', '.join(KINDS)}")
    return Needle(kind, sentence.encode(), query.encode(), value.encode())


def make_needle(kind: str, rng: random.Random) -> Needle:
    """A needle of `kind` with a key word and a value drawn from `rng`."""
    key = rng.choice(KEY_WORDS)
    if kind == "passkey":
        value = str(rng.randrange(10_000, 100_000))
    elif kind == "number":
        value = str(rng.randrange(1_000_000, 10_000_000))
    else:
        value = _uuid(rng)
    return _format(kind, key, value)


def longest_overhead(kind: str) -> int:
    """The most non-haystack bytes a needle of `kind` takes (with the longest key word)."""
    width = {"passkey": 5, "number": 7, "uuid": 36}.get(kind, 0)
    return _format(kind, max(KEY_WORDS, key=len), "0" * width).overhead


def insertion_point(haystack: bytes, depth: float) -> int:
    """Where a needle at `depth` goes: `round(depth * len)`, moved back to a word's start."""
    p = round(depth * len(haystack))
    for j in range(p, max(-1, p - SNAP - 1), -1):
        if j == 0 or haystack[j - 1] in _SPACE:
            return j
    return p  # no word start within SNAP bytes (a long token): cut it


def needle_row(text: bytes, length: int, depth: float, kind: str, seed: int) -> NeedleRow:
    """One row of `length + 1` bytes with a `kind` needle at `depth` in a haystack of `text`."""
    if not 0.0 <= depth <= 1.0:
        raise UserError(f"needle: depths must lie in [0, 1], got {depth}")
    rng = random.Random(seed)
    needle = make_needle(kind, rng)
    h = length + 1 - needle.overhead
    if h < 1:
        raise UserError(
            f"needle: a row of {length} bytes cannot hold the {kind} needle, its query and answer "
            f"({needle.overhead} bytes); use a longer --train-length"
        )
    if len(text) < h:
        raise UserError(f"needle: the haystack text has {len(text)} bytes, a row needs {h}")
    offset = rng.randrange(0, len(text) - h + 1)
    haystack = text[offset : offset + h]
    start = insertion_point(haystack, depth)
    row = haystack[:start] + needle.sentence + haystack[start:] + needle.query + needle.answer
    assert len(row) == length + 1, "bug: a needle row has the wrong length"
    return NeedleRow(row, needle, offset, h, start)


def row_tensors(rows: list[NeedleRow]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs `[n, L]` (each row's first L bytes) and labels `[n, L]` (answer bytes, else IGNORE)."""
    data = torch.tensor([list(r.text) for r in rows], dtype=torch.long)  # [n, L + 1]
    inputs, targets = data[:, :-1], data[:, 1:]  # [n, L], [n, L]
    labels = torch.full_like(targets, IGNORE)  # [n, L]
    for i, r in enumerate(rows):
        # The answer's first byte is predicted at the query's last byte, one position earlier.
        first = r.answer_start - 1
        labels[i, first:] = targets[i, first:]
    return inputs, labels


def needle_batch(
    text: bytes, length: int, rows: int, seed: int, kinds=KINDS, depth: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` rows: kinds in turn, depth uniform in [0, 1] unless given; inputs and labels."""
    rng = random.Random(seed)
    batch = []
    for i in range(rows):
        d = rng.random() if depth is None else depth
        batch.append(needle_row(text, length, d, kinds[i % len(kinds)], rng.getrandbits(63)))
    return row_tensors(batch)


def answer_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: whether every answer byte is the argmax (0/1), and the fraction that is: `[n]`.

    The model reads the true answer bytes before each one (teacher forcing); every argmax right
    is exactly the case where greedy decoding after the query writes the whole answer.
    """
    asked = labels != IGNORE  # [n, L]
    right = (logits.argmax(dim=-1) == labels) & asked  # [n, L]
    hits = right.sum(dim=1).double()  # [n]
    total = asked.sum(dim=1).clamp(min=1).double()  # [n]
    return (hits == total).double(), hits / total
