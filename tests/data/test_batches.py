"""Batches are a pure function of the step; DDP shards are rows r::w of the global batch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nestdsl.data import ByteBatches
from nestdsl.errors import UserError

TEXT = bytes((i * 7 + i // 13) % 256 for i in range(5000))


def batches(**changes) -> ByteBatches:
    values = dict(split="train", batch_size=8, seq_len=32, seed=0)
    values.update(changes)
    return ByteBatches(TEXT, **values)


def test_shapes_and_shift():
    batch = batches().batch(3)
    assert batch.inputs.shape == batch.targets.shape == (8, 32)
    assert batch.inputs.dtype == torch.int64
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    data = torch.tensor(list(TEXT))
    for row in range(8):  # each row is a real window of the text
        start = batches().global_starts(3)[row]
        assert torch.equal(batch.inputs[row], data[start : start + 32])


def test_pure_function_of_step_seed_and_split():
    a, b = batches(), batches()
    assert torch.equal(a.batch(5).inputs, b.batch(5).inputs)  # two objects, same step
    assert torch.equal(a.batch(5).inputs, a.batch(5).inputs)  # asking twice
    assert not torch.equal(a.batch(5).inputs, a.batch(6).inputs)
    assert not torch.equal(a.batch(5).inputs, batches(seed=1).batch(5).inputs)
    assert not torch.equal(a.batch(5).inputs, batches(split="val").batch(5).inputs)


@settings(max_examples=30, deadline=None)
@given(
    step=st.integers(0, 10_000), world_size=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 99)
)
def test_rank_shards_interleave_into_the_global_batch(step, world_size, seed):
    whole = batches(seed=seed).batch(step).inputs
    shards = [
        batches(seed=seed, rank=r, world_size=world_size).batch(step).inputs
        for r in range(world_size)
    ]
    rebuilt = torch.empty_like(whole)
    for rank, shard in enumerate(shards):
        assert shard.shape[0] == 8 // world_size
        rebuilt[rank::world_size] = shard
    assert torch.equal(rebuilt, whole)


def test_streams_continue_where_the_previous_step_ended():
    streams = batches(contiguous=True, batch_size=4, seq_len=10)
    first, second = streams.batch(0), streams.batch(1)
    assert first.fresh_state and not second.fresh_state
    # Row b of step 1 starts right after row b of step 0.
    assert torch.equal(second.inputs[:, 0], first.targets[:, -1])
    chunks = streams.chunks_per_lane
    assert streams.batch(chunks).fresh_state  # wrapped around: fresh memories again
    assert torch.equal(streams.batch(chunks).inputs, first.inputs)
    shards = [
        batches(contiguous=True, batch_size=4, seq_len=10, rank=r, world_size=2) for r in range(2)
    ]
    assert torch.equal(shards[1].batch(7).inputs, streams.batch(7).inputs[1::2])


def test_errors():
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        batches(world_size=3, rank=0)
    with pytest.raises(UserError, match="fewer than seq_len"):
        ByteBatches(b"short", split="val", batch_size=1, seq_len=16, seed=0)
    with pytest.raises(UserError, match="too short for 8 streams"):
        ByteBatches(TEXT[:100], split="train", batch_size=8, seq_len=32, seed=0, contiguous=True)
