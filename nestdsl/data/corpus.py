"""Byte-level text corpora: loading one and splitting it into training and validation parts.

Models in nestdsl read raw bytes (vocabulary 256), so a corpus is simply a `bytes` object. The
default corpus is the complete works of Shakespeare (public domain, Project Gutenberg), shipped
gzipped inside the package; any other file can be given by path (gzipped when its name ends in
`.gz`). Problems a user can cause (a missing, unreadable or empty file) raise `UserError` with a
one-line message, so the command line never shows a traceback for them.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from nestdsl.errors import UserError

DEFAULT_CORPUS = Path(__file__).with_name("shakespeare.txt.gz")
DEFAULT_CORPUS_NAME = "shakespeare"

# The last 5% of the bytes are held out: a contiguous tail (rather than random windows) keeps
# validation text disjoint from training text, since windows would otherwise straddle both.
VALIDATION_FRACTION = 0.05


def load_corpus(path: str | Path | None = None) -> bytes:
    """The bytes of a text corpus: the embedded Shakespeare when `path` is None, else the file.

    A file whose name ends in `.gz` is decompressed. Raises `UserError` when the file is missing,
    unreadable, not valid gzip, or empty.
    """
    source = DEFAULT_CORPUS if path is None else Path(path)
    shown = DEFAULT_CORPUS_NAME if path is None else str(path)
    if not source.exists():
        raise UserError(f"data file {shown} does not exist")
    if source.is_dir():
        raise UserError(f"data file {shown} is a directory, not a text file")
    try:
        raw = source.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read data file {shown}: {err.strerror or err}") from None
    if source.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise UserError(f"data file {shown} is not valid gzip: {err}") from None
    if not raw:
        raise UserError(f"data file {shown} is empty")
    return raw


def corpus_fingerprint(data: bytes) -> str:
    """A SHA-256 hex digest identifying the corpus, so a resumed run can check it sees the same text."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CorpusSplit:
    """The training and validation parts of a corpus; `validation` is the tail of the text."""

    train: bytes
    validation: bytes

    def part(self, split: str) -> bytes:
        if split == "train":
            return self.train
        if split in ("val", "validation"):
            return self.validation
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'val'")


def split_corpus(data: bytes, val_fraction: float = VALIDATION_FRACTION) -> CorpusSplit:
    """Split deterministically: the last `val_fraction` of the bytes are validation.

    Both parts get at least one byte when the corpus has two or more; a one-byte corpus cannot
    be split and raises `UserError`.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    if len(data) < 2:
        raise UserError(f"the corpus has {len(data)} byte(s); at least 2 are needed to split it")
    n_val = min(len(data) - 1, max(1, int(len(data) * val_fraction)))
    cut = len(data) - n_val
    return CorpusSplit(train=data[:cut], validation=data[cut:])
