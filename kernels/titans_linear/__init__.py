"""Titans linear memory with momentum (Titans §3.2): loop reference and chunk-parallel form.

``titans_linear`` is the chunk form; ``titans_linear_naive`` the per-token oracle. Both take
``(q, k, v, theta, eta, alpha, *, chunk_size=16, scale=None, initial_state=None,
initial_momentum=None, output_final_state=False)``; see README.md for the recurrence.
"""

from .chunk import titans_linear_chunk
from .naive import titans_linear_naive

titans_linear = titans_linear_chunk

__all__ = ["titans_linear", "titans_linear_chunk", "titans_linear_naive"]
