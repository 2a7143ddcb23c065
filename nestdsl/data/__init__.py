"""Training data: the embedded corpora, splits, deterministic batches and tokenizers (bytes, BPE)."""

from nestdsl.data.batches import VOCAB, Batch, ByteBatches
from nestdsl.data.corpus import (
    DEFAULT_CORPUS,
    VALIDATION_FRACTION,
    CorpusSplit,
    corpus_fingerprint,
    load_corpus,
    split_corpus,
)
from nestdsl.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    tokenizer_from_json,
    train_tokenizer,
)

__all__ = [
    "DEFAULT_CORPUS",
    "VALIDATION_FRACTION",
    "VOCAB",
    "BPETokenizer",
    "Batch",
    "ByteTokenizer",
    "ByteBatches",
    "CorpusSplit",
    "Tokenizer",
    "corpus_fingerprint",
    "load_corpus",
    "split_corpus",
    "tokenizer_from_json",
    "train_tokenizer",
]
