"""Training batches as a pure function of where the run is, so a resumed run sees the same data.

A batch depends only on (split, step, rank, world_size, seed, batch_size, seq_len): no iterator
state needs saving in checkpoints, and resuming at step `s` reads exactly the batch an
uninterrupted run would have read at step `s`.

The *global* batch has `batch_size` rows; under DistributedDataParallel rank `r` of `w` takes
rows `r::w`, so the union over ranks is the single-process global batch and averaging the ranks'
gradients reproduces the single-process gradient.

Two layouts:

* random windows (default): every row is an independent window at a random offset, drawn from a
  generator seeded by (seed, split, step). Each window starts with fresh in-context memories.
* streams (`contiguous=True`, for runs that carry in-context memory across steps): the corpus is
  cut into `batch_size` lanes and step `s` reads the next `seq_len` bytes of every lane, so the
  memory state of row `b` at the end of step `s` is the right context for step `s + 1`. When the
  lanes are exhausted the reading wraps around and `Batch.fresh_state` says to start over.

Inputs are `[B, T]` int64 token ids; targets are the same windows shifted by one token. The
data is the text's bytes (the `bytes` tokenizer) or its token ids under another tokenizer
(nestdsl/data/tokenizer.py): a batch is cut from ids the same way whatever they stand for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from nestdsl.errors import UserError

# The default tokenizer's vocabulary: one token per byte, so 256 token ids.
VOCAB = 256


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor  # [rows, seq_len] int64
    targets: torch.Tensor  # [rows, seq_len] int64, inputs shifted left by one token
    fresh_state: bool  # start these rows from fresh in-context memories


def step_seed(seed: int, split: str, step: int) -> int:
    """A 63-bit generator seed for one (seed, split, step); hashing keeps nearby steps unrelated."""
    digest = hashlib.blake2b(f"{seed}/{split}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def bytes_to_tensor(data: bytes) -> torch.Tensor:
    """A uint8 tensor over a copy of `data` (torch wants a writable buffer)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class ByteBatches:
    """The batches of one split of a corpus, as seen by one rank.

    `data` is the split's bytes or its token ids (a 1-D integer tensor); `unit` names what one
    id is, for messages. `batch(step)` is a pure function of the constructor arguments and `step`.
    """

    def __init__(
        self,
        data: bytes | torch.Tensor,
        *,
        split: str,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        contiguous: bool = False,
        unit: str = "bytes",
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise UserError(
                f"batch size and sequence length must be positive, got {batch_size} and {seq_len}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size % world_size:
            raise UserError(
                f"the global batch size {batch_size} is not divisible by the {world_size} "
                "processes; every rank needs the same number of rows"
            )
        self.data = data if isinstance(data, torch.Tensor) else bytes_to_tensor(data)
        self.split = split
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.contiguous = contiguous
        n = self.data.numel()
        if contiguous:
            self.lane_length = n // batch_size
            # A chunk needs seq_len + 1 ids (the target of the last input is the next one).
            self.chunks_per_lane = (self.lane_length - 1) // seq_len
            if self.chunks_per_lane < 1:
                raise UserError(
                    f"the {split} text ({n} {unit}) is too short for {batch_size} streams of "
                    f"{seq_len + 1} {unit}; use a smaller --batch-size or --seq-len, or more data"
                )
        elif n < seq_len + 1:
            raise UserError(
                f"the {split} text has {n} {unit}, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a shorter --seq-len or a larger --data file"
            )
        self._offsets = torch.arange(seq_len + 1)

    @property
    def rows_per_rank(self) -> int:
        return self.batch_size // self.world_size

    def global_starts(self, step: int) -> torch.Tensor:
        """Start offsets of all `batch_size` rows of the global batch at `step`."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if self.contiguous:
            chunk = step % self.chunks_per_lane
            lanes = torch.arange(self.batch_size) * self.lane_length
            return lanes + chunk * self.seq_len
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.split, step))
        high = self.data.numel() - self.seq_len  # exclusive: the last window ends at the last id
        return torch.randint(0, high, (self.batch_size,), generator=generator)

    def batch(self, step: int) -> Batch:
        """This rank's rows `rank::world_size` of the global batch at `step`."""
        starts = self.global_starts(step)[self.rank :: self.world_size]
        windows = self.data[starts[:, None] + self._offsets].long()
        fresh = not self.contiguous or step % self.chunks_per_lane == 0
        return Batch(inputs=windows[:, :-1], targets=windows[:, 1:], fresh_state=fresh)
