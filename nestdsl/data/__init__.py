"""Byte-level training data: the embedded Shakespeare corpus, splits and deterministic batches."""

from nestdsl.data.batches import VOCAB, Batch, ByteBatches
from nestdsl.data.corpus import (
    DEFAULT_CORPUS,
    VALIDATION_FRACTION,
    CorpusSplit,
    corpus_fingerprint,
    load_corpus,
    split_corpus,
)

__all__ = [
    "DEFAULT_CORPUS",
    "VALIDATION_FRACTION",
    "VOCAB",
    "Batch",
    "ByteBatches",
    "CorpusSplit",
    "corpus_fingerprint",
    "load_corpus",
    "split_corpus",
]
