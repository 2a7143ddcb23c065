"""Tokenizers of the training data: `bytes` (one token per byte) or `bpe:N` (a byte-level BPE).

A tokenizer turns text (bytes) into token ids and back, exactly: `decode(encode(x)) == x` for
any bytes `x`, valid UTF-8 or not. It also says how many bytes of text each token stands for
(`token_bytes`), so that a loss in nats per token can be turned into bits per *byte*, the unit
in which models with different tokenizers compare (docs/training.md, "Tokenizers").

* `bytes`: the identity on byte values, vocabulary 256, every token one byte.
* `bpe:N`: a byte-level BPE (Sennrich et al. 2016, in GPT-2's byte-level form) with a vocabulary
  of exactly N ids (N > 256: the 256 single bytes plus N - 256 merges), trained by the
  `tokenizers` library on the training text of a run only (never on held-out text), with no
  normalizer, no special tokens and no pretrained files: nothing is downloaded. Training is
  deterministic (the same text gives the same tokenizer.json, byte for byte); the trained
  tokenizer is saved in the run folder and read from there on resume, generation and eval.

Text that is not valid UTF-8 cannot go through the library (it reads strings), so invalid bytes
are encoded as their single-byte tokens between the valid runs: nothing is lost.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

import torch

from nestdsl.errors import UserError

BYTES = "bytes"
BYTE_VOCAB = 256
MAX_BPE_VOCAB = 1 << 20  # an embedding table larger than this is surely a typo
_BPE_NAME = re.compile(r"bpe:(\d+)")
# Valid UTF-8 text is cut before a newline that a printable ASCII character follows. GPT-2's
# pre-tokenizer always has a boundary there: a whitespace run before a visible character
# leaves its last character to stand alone (or to lead the next word, for a space), so the
# pieces encode to exactly the ids of the whole text (tests check it), and the library encodes
# a batch of pieces in parallel.
_PIECE_BOUNDARY = re.compile(r"(?=\n[!-~])")
_BATCH_PIECES = 1 << 16


def check_name(name: str) -> tuple[str, int]:
    """`("bytes", 256)` or `("bpe", N)` for a tokenizer name; UserError for anything else."""
    if name == BYTES:
        return BYTES, BYTE_VOCAB
    match = _BPE_NAME.fullmatch(name)
    if match is None:
        raise UserError(
            f"--tokenizer must be `bytes` or `bpe:N` with N the vocabulary (e.g. bpe:4096), "
            f"got {name!r}"
        )
    size = int(match.group(1))
    if not BYTE_VOCAB < size <= MAX_BPE_VOCAB:
        raise UserError(
            f"--tokenizer {name}: a byte-level BPE has the 256 bytes plus its merges, so N must "
            f"be between 257 and {MAX_BPE_VOCAB:,}"
        )
    return "bpe", size


def vocab_of(name: str) -> int:
    """The vocabulary size a tokenizer name promises (the spec's `dims.vocab` follows it)."""
    return check_name(name)[1]


class Tokenizer:
    """The interface: `name`, `vocab_size`, `encode`, `decode`, `token_bytes`, `to_json`."""

    name: str
    vocab_size: int

    def encode(self, data: bytes) -> torch.Tensor:
        """Token ids `[n]` (an integer tensor) of `data`."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> bytes:
        raise NotImplementedError

    @property
    def token_bytes(self) -> torch.Tensor:
        """`[vocab_size]` int64: how many bytes of text each token id stands for."""
        raise NotImplementedError

    def to_json(self) -> str | None:
        """The text of tokenizer.json, or None when there is nothing to save (bytes)."""
        return None

    @property
    def sha256(self) -> str | None:
        text = self.to_json()
        return None if text is None else hashlib.sha256(text.encode()).hexdigest()


class ByteTokenizer(Tokenizer):
    """One token per byte: token id = byte value."""

    name = BYTES
    vocab_size = BYTE_VOCAB

    def encode(self, data: bytes) -> torch.Tensor:
        # uint8 keeps a large corpus at one byte per token; batches widen rows to int64.
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # [n]

    def decode(self, ids: Iterable[int]) -> bytes:
        return bytes(int(i) for i in ids)

    @property
    def token_bytes(self) -> torch.Tensor:
        return torch.ones(BYTE_VOCAB, dtype=torch.long)  # [256]


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet byte-level BPE works in.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, DEL, NBSP,
    soft hyphen) are moved to the characters from U+0100 on, in byte order, so that every token
    is a printable string.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {byte: chr(byte) for byte in kept}
    moved = (byte for byte in range(256) if byte not in table)
    table.update({byte: chr(0x100 + n) for n, byte in enumerate(moved)})
    return table


class BPETokenizer(Tokenizer):
    """A trained byte-level BPE (a `tokenizers.Tokenizer`) and its id -> bytes table."""

    def __init__(self, name: str, model) -> None:
        self.name = name
        self.vocab_size = vocab_of(name)
        self.model = model
        found = model.get_vocab_size()
        if found != self.vocab_size:
            raise UserError(
                f"tokenizer {name}: the training text gives only {found} distinct tokens, not "
                f"{self.vocab_size}; ask for bpe:{found} or fewer, or train on more text"
            )
        to_byte = {char: byte for byte, char in byte_alphabet().items()}
        pieces: list[bytes] = [b""] * self.vocab_size
        for token, index in model.get_vocab().items():
            pieces[index] = bytes(to_byte[char] for char in token)
        self._pieces = pieces
        alphabet = byte_alphabet()
        self._byte_ids = [model.token_to_id(alphabet[byte]) for byte in range(256)]
        self._token_bytes = torch.tensor([len(p) for p in pieces], dtype=torch.long)  # [V]

    def encode(self, data: bytes) -> torch.Tensor:
        ids: list[int] = []
        for text, invalid in _utf8_runs(data):
            pieces = _PIECE_BOUNDARY.split(text) if text else []
            batches = [pieces[i : i + _BATCH_PIECES] for i in range(0, len(pieces), _BATCH_PIECES)]
            for batch in batches:
                for encoding in self.model.encode_batch(batch, add_special_tokens=False):
                    ids.extend(encoding.ids)
            ids.extend(self._byte_ids[byte] for byte in invalid)
        return torch.tensor(ids, dtype=torch.int32)  # [n]

    def decode(self, ids: Iterable[int]) -> bytes:
        return b"".join(self._pieces[int(i)] for i in ids)

    @property
    def token_bytes(self) -> torch.Tensor:
        return self._token_bytes

    def to_json(self) -> str:
        return self.model.to_str()


def _utf8_runs(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(valid text, the invalid bytes after it) pairs covering `data` in order."""
    start = 0
    while start < len(data):
        try:
            yield data[start:].decode("utf-8"), b""
            return
        except UnicodeDecodeError as err:
            yield data[start : start + err.start].decode("utf-8"), data[
                start + err.start : start + err.end
            ]
            start += err.end


def _bpe_model():
    """An empty byte-level BPE: no normalizer, GPT-2's pre-tokenizer, no special tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    model = HFTokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    model.decoder = decoders.ByteLevel()
    return model


def train_tokenizer(name: str, text: bytes) -> Tokenizer:
    """The tokenizer `name` for training text `text`: bytes as is, a BPE trained on `text`."""
    kind, size = check_name(name)
    if kind == BYTES:
        return ByteTokenizer()
    from tokenizers import pre_tokenizers, trainers

    model = _bpe_model()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        min_frequency=0,  # a tiny corpus still reaches N when every pair may merge
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
    )
    runs = [text for text, _ in _utf8_runs(text) if text]
    model.train_from_iterator(_pieces_of(runs), trainer=trainer)
    return BPETokenizer(name, model)


def _pieces_of(runs: list[str]) -> Iterator[str]:
    for run in runs:
        yield from _PIECE_BOUNDARY.split(run)


def tokenizer_from_json(name: str, text: str | None) -> Tokenizer:
    """The tokenizer `name` as saved (tokenizer.json's text; None for bytes)."""
    kind, _ = check_name(name)
    if kind == BYTES:
        return ByteTokenizer()
    if text is None:
        raise UserError(f"tokenizer {name}: the run folder has no tokenizer.json")
    from tokenizers import Tokenizer as HFTokenizer

    try:
        model = HFTokenizer.from_str(text)
    except Exception as err:  # noqa: BLE001 - the library raises bare Exceptions for bad JSON
        raise UserError(f"tokenizer.json is not a valid tokenizer ({err})") from None
    return BPETokenizer(name, model)
