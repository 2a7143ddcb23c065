"""Multi-query associative recall (MQAR) data, with the semantics of Zoology's generator.

MQAR is the synthetic recall task of Arora et al. 2023, "Zoology: Measuring and Improving
Recall in Efficient Language Models" (§3, and `zoology/data/associative_recall.py`,
`multiquery_ar`). A row of length L holds N key-value pairs followed by queries:

    k_1 v_1 k_2 v_2 ... k_N v_N | f f k_3 f f f k_1 f ... f k_2 f ...
    <------- context: 2N ------> <------------ query zone: L - 2N ------------>

* keys are N distinct tokens of the lower half of the vocabulary, `1 .. vocab/2 - 1` (token 0
  marks a filler slot before fillers are drawn, so it is never a key);
* values are N distinct tokens of the upper half, `vocab/2 .. vocab - 1`;
* every key is queried once, in the query zone at position `2N + 2 g_i`, where the slots
  `g_1 .. g_N` are drawn without replacement from `0 .. (L - 2N)/2 - 1` with Zoology's power law
  `p(g) ∝ a (g + 1)^(a - 1)` (a = 0.01: short gaps are more likely, long ones still occur);
* the label at a query position is its key's value (the next-token target), every other label
  is `IGNORE` (-100, which `F.cross_entropy` skips);
* every other slot of the query zone is a filler token drawn uniformly from the whole
  vocabulary (Zoology's `random_non_queries=True`).

Rows are a pure function of (seed, shape): `mqar_rows(..., seed=s)` gives the same tensors on
every machine, so a training step or a held-out set is named by its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nestdsl.errors import UserError

IGNORE = -100  # label of positions that are not queries (skipped by F.cross_entropy)
POWER_A = 0.01  # Zoology's default exponent of the gap distribution


@dataclass(frozen=True)
class MQARShape:
    """One grid point of the task: sequence length L, pairs N, vocabulary size."""

    seq_len: int
    pairs: int
    vocab: int

    def check(self) -> None:
        """Refuse shapes Zoology's generator refuses, with the reason in words."""
        L, N, V = self.seq_len, self.pairs, self.vocab
        if N < 1 or L < 1:
            raise UserError(f"MQAR needs L >= 1 and N >= 1 pairs, got L={L}, N={N}")
        if L % 2:
            raise UserError(f"MQAR needs an even sequence length (key/query slots), got L={L}")
        if 4 * N > L:
            raise UserError(
                f"MQAR with N={N} pairs needs L >= 4N = {4 * N} (2N for the pairs, 2N for the "
                f"queries), got L={L}"
            )
        if V <= L:
            raise UserError(f"MQAR needs a vocabulary larger than L (Zoology), got {V} <= {L}")
        # V > L >= 4N leaves V/2 - 1 >= N distinct keys: no separate check is needed.


def gap_probabilities(space: int, power_a: float = POWER_A) -> torch.Tensor:
    """Zoology's power law over query slots 0 .. space-1: p(g) ∝ a (g + 1)^(a - 1)."""
    ranks = torch.arange(1, space + 1, dtype=torch.float64)  # [space]
    p = power_a * ranks ** (power_a - 1)
    return p / p.sum()


def _distinct(low: int, high: int, rows: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` distinct integers from [low, high) per row, uniformly (a random permutation's head)."""
    scores = torch.rand(rows, high - low, generator=gen)  # [rows, high - low]
    return scores.argsort(dim=1)[:, :count] + low  # [rows, count]


def mqar_rows(
    shape: MQARShape, rows: int, seed: int, power_a: float = POWER_A
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` MQAR rows: inputs `[rows, L]` int64 and labels `[rows, L]` (IGNORE off queries)."""
    shape.check()
    L, N, V = shape.seq_len, shape.pairs, shape.vocab
    gen = torch.Generator().manual_seed(seed)
    keys = _distinct(1, V // 2, rows, N, gen)  # [rows, N]
    values = _distinct(V // 2, V, rows, N, gen)  # [rows, N]
    space = (L - 2 * N) // 2
    p = gap_probabilities(space, power_a).expand(rows, space)  # [rows, space]
    gaps = torch.multinomial(p, N, replacement=False, generator=gen)  # [rows, N]

    inputs = torch.randint(0, V, (rows, L), generator=gen)  # fillers everywhere first
    inputs[:, 0 : 2 * N : 2] = keys
    inputs[:, 1 : 2 * N : 2] = values
    query_pos = 2 * N + 2 * gaps  # [rows, N]
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((rows, L), IGNORE, dtype=torch.long)
    labels.scatter_(1, query_pos, values)  # the next token after a query is its value
    return inputs, labels


def row_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the fraction of its queries whose argmax prediction is the right value: `[rows]`."""
    asked = labels != IGNORE  # [rows, L]
    right = (logits.argmax(dim=-1) == labels) & asked  # [rows, L]
    return right.sum(dim=1).double() / asked.sum(dim=1).clamp(min=1).double()


def query_distances(inputs: torch.Tensor, labels: torch.Tensor, pairs: int) -> torch.Tensor:
    """Per position, how many tokens after its key a query comes (0 off queries): `[rows, L]`.

    A query at position q for the pair stored at positions 2i, 2i+1 has distance q - 2i: an
    attention window of w tokens at q still holds the pair when the distance is at most w.
    """
    asked = labels != IGNORE  # [rows, L]
    keys = inputs[:, 0 : 2 * pairs : 2]  # [rows, N]
    index = (inputs.unsqueeze(-1) == keys.unsqueeze(1)).int().argmax(dim=-1)  # [rows, L]
    positions = torch.arange(inputs.shape[1])
    return torch.where(asked, positions - 2 * index, 0)
