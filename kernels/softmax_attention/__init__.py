"""Causal softmax attention read as a cache memory: loop reference and parallel (SDPA) form."""

from .chunk import softmax_attention_chunk
from .naive import softmax_attention_naive

__all__ = ["softmax_attention_chunk", "softmax_attention_naive"]
