"""Byte-level text corpora: the embedded ones by name, any file by path, and the held-out split.

Models in nestdsl read raw bytes (vocabulary 256), so a corpus is simply a `bytes` object. Four
public-domain English corpora ship gzipped inside the package (sources and licences in
CORPORA.md beside this file) and are named wherever a corpus is accepted (`nestdsl train
--data kjv`, `nestdsl eval --task bpb --data milton`, the domains of the `continual` task):

* `shakespeare`: 42 works of Shakespeare (the default corpus);
* `kjv`: the King James Bible, with chapter and verse numbers;
* `milton`: Milton's Areopagitica, poetical works and Latin poemata;
* `jargon`: the Jargon File 4.4.7, a hacker glossary.

How a corpus argument resolves: an existing file of that name wins (so a user's file is never
shadowed by an embedded name); otherwise an embedded name; otherwise a `UserError` that lists
the embedded names. A file whose name ends in `.gz` is decompressed. Problems a user can cause
(a missing, unreadable or empty file) raise `UserError` with a one-line message, so the command
line never shows a traceback for them.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from nestdsl.errors import UserError

_HERE = Path(__file__).parent
# The embedded corpora by name, in the continual task's default domain order.
EMBEDDED = {
    "shakespeare": _HERE / "shakespeare.txt.gz",
    "kjv": _HERE / "kjv.txt.gz",
    "milton": _HERE / "milton.txt.gz",
    "jargon": _HERE / "jargon.txt.gz",
}
DEFAULT_CORPUS_NAME = "shakespeare"
DEFAULT_CORPUS = EMBEDDED[DEFAULT_CORPUS_NAME]

# The last 5% of the bytes are held out: a contiguous tail (rather than random windows) keeps
# validation text disjoint from training text, since windows would otherwise straddle both.
VALIDATION_FRACTION = 0.05


def resolve_corpus(name_or_path: str | Path | None) -> tuple[Path, str]:
    """The file a corpus argument names and how to show it: (path, shown name).

    None is the default corpus; an existing file wins over an embedded name of the same
    spelling; a string that is neither gets a `UserError` listing the embedded names.
    """
    if name_or_path is None:
        return DEFAULT_CORPUS, DEFAULT_CORPUS_NAME
    path = Path(name_or_path)
    if path.exists():
        return path, str(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in EMBEDDED:
        return EMBEDDED[name_or_path], name_or_path
    raise UserError(
        f"data file {name_or_path} does not exist and is not an embedded corpus "
        f"(embedded: {', '.join(EMBEDDED)})"
    )


def corpus_argument(name_or_path: str) -> str:
    """How a run records a corpus argument: an embedded name stays a name (when no file of that
    name exists), anything else becomes an absolute path, so a resumed run finds the same file
    from any working directory."""
    path = Path(name_or_path).expanduser()
    if name_or_path in EMBEDDED and not path.exists():
        return name_or_path
    return str(path.resolve())


def corpus_label(name_or_path: str | Path | None) -> str:
    """A short name for a corpus argument: the embedded name, or the file's name without
    `.txt` / `.gz` (for table headings and plot labels)."""
    if name_or_path is None:
        return DEFAULT_CORPUS_NAME
    text = str(name_or_path)
    if text in EMBEDDED and not Path(text).exists():
        return text
    name = Path(text).name
    for suffix in (".gz", ".txt"):
        name = name.removesuffix(suffix)
    return name or text


def load_corpus(path: str | Path | None = None) -> bytes:
    """The bytes of a text corpus: the embedded Shakespeare when `path` is None, an embedded
    corpus by name (`kjv`, ...), else the file (see `resolve_corpus` for the order).

    A file whose name ends in `.gz` is decompressed. Raises `UserError` when the file is missing,
    unreadable, not valid gzip, or empty.
    """
    source, shown = resolve_corpus(path)
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
