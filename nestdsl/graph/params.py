"""Parameter counts per level, from the inferred shapes (what `nestdsl show` prints).

Outer levels own block parameters and learned initial states; in-context levels own the state
of their memories (one instance per block repetition).
"""

from __future__ import annotations

import math
from collections import Counter

from nestdsl.spec.dims import evaluate
from nestdsl.spec.memory import (
    CacheStructure,
    GatedMLPStructure,
    LearnedInit,
    MatrixStructure,
    MLPStructure,
)
from nestdsl.spec.ops import Aggregate, Linear, Norm, Persistent, ShortConv


def memory_state_size(memory, dims: dict[str, int]) -> int:
    """Numbers in one instance of a memory's state (0 for a cache: it grows with the context)."""
    st = memory.structure
    heads = evaluate(st.heads, dims)
    if isinstance(st, CacheStructure):
        return 0
    if isinstance(st, MatrixStructure):
        return heads * evaluate(st.key_dim, dims) * evaluate(st.value_dim, dims)
    d = evaluate(st.dim, dims)
    hidden = max(1, round(st.expansion * d))
    if isinstance(st, GatedMLPStructure):
        return heads * 3 * d * hidden
    assert isinstance(st, MLPStructure)
    if st.depth == 1:
        return heads * d * d
    return heads * (2 * d * hidden + (st.depth - 2) * hidden * hidden)


def count_by_level(checked) -> Counter:
    """Level name -> number of parameters (outer) or state numbers (in-context) it updates."""
    spec, shapes = checked.spec, checked.shapes
    dims = spec.dims
    counts: Counter = Counter()
    outer = checked.outer_level()
    d_model = evaluate(spec.embed.dim, dims)
    vocab = evaluate(spec.embed.vocab, dims)
    counts[outer] += vocab * d_model
    if not spec.head.tied:
        counts[outer] += vocab * d_model
    if spec.head.norm != "none":
        counts[outer] += d_model
    for index, block in enumerate(spec.blocks):
        bname = block.name or f"block{index}"
        repeat = evaluate(block.repeat, dims)
        owner = block.level or outer
        for name, op in block.nodes.items():
            counts[owner] += repeat * _op_params(op, name, bname, block, shapes, dims)
        for mem_name in {op.memory for op in block.nodes.values() if hasattr(op, "memory")}:
            memory = spec.memories[mem_name]
            size = memory_state_size(memory, dims)
            counts[memory.level] += repeat * size
            if isinstance(memory.init, LearnedInit) and memory.level != (memory.init.by or outer):
                counts[memory.init.by or outer] += repeat * size
    return counts


def _op_params(op, name, bname, block, shapes, dims) -> int:
    if isinstance(op, Linear):
        fan_in = math.prod(shapes[(bname, op.in_)])
        fan_out = math.prod(shapes[(bname, name)])
        extra = sum(fan_out * 4 for p in op.then if p == "short_conv")
        extra += sum(shapes[(bname, name)][-1] for p in op.then if p == "rmsnorm")
        return fan_in * fan_out + (fan_out if op.bias else 0) + extra
    if isinstance(op, Norm):
        return shapes[(bname, name)][-1] * (1 if op.op == "rmsnorm" else 2)
    if isinstance(op, ShortConv):
        return math.prod(shapes[(bname, name)]) * op.kernel
    if isinstance(op, Persistent):
        return evaluate(op.tokens, dims) * evaluate(op.dim, dims)
    if isinstance(op, Aggregate) and op.mode == "learned":
        return len(op.in_)
    return 0
