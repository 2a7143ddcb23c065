"""Gated delta rule (error-correcting matrix memory): loop reference and chunk-parallel form.

The plain delta rule is the special case ``g=None`` (no decay).
"""

from .chunk import gated_delta_rule_chunk
from .naive import gated_delta_rule_naive

__all__ = ["gated_delta_rule_chunk", "gated_delta_rule_naive"]
