"""Linear attention (additive matrix memory): loop reference and chunk-parallel form."""

from .chunk import linear_attention_chunk
from .naive import linear_attention_naive

__all__ = ["linear_attention_chunk", "linear_attention_naive"]
