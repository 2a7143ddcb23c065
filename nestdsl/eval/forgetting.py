"""Continual-learning metrics over a matrix of held-out losses: BWT, FWT and forgetting.

The matrix is the one of Lopez-Paz & Ranzato (2017, "Gradient Episodic Memory for Continual
Learning", §4): after training on task i (rows, in training order) every task j (columns, the
same order) is evaluated, R[i][j]. They measure accuracy, where higher is better; the
`continual` task measures bits per byte, where lower is better, so every metric here is written
with the sign that keeps the papers' reading:

* **average final bpb** (their ACC): mean_j R[T-1][j], the model's score on every domain at the
  end (lower is better);
* **backward transfer** BWT = 1/(T-1) * sum_{i<T-1} (R[i][i] - R[T-1][i]): how much a domain's
  bpb fell (positive: later training helped it) or rose (**negative: forgetting**) between just
  after training on it and the end. Their accuracy difference a_final - a_just-trained becomes
  the bpb difference just-trained - final, so "negative BWT = forgetting" still holds;
* **forward transfer** FWT = 1/(T-1) * sum_{i>=1} (b[i] - R[i-1][i]), with b the untrained
  model's bpb: how much the earlier domains lowered a domain's bpb before it was trained on
  (positive: they helped);
* **forgetting** of Chaudhry et al. (2018, "Riemannian Walk for Incremental Learning", §4.1),
  per domain j < T-1: f_j = R[T-1][j] - min_{l<T-1} R[l][j], the rise from the best (lowest)
  bpb it had after any earlier stage to the final one (positive: forgotten; their
  max_l a[l][j] - a[T-1][j] with the loss in place of the accuracy); the average over j < T-1.
  The last domain has nothing after it to forget by, so it has no entry.

Rows are training stages, columns domains, both in training order; T = number of domains.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _square(r: Matrix) -> int:
    """T for a T x T matrix; ValueError otherwise (the task always builds a square one)."""
    t = len(r)
    if t == 0 or any(len(row) != t for row in r):
        shape = [len(row) for row in r]
        raise ValueError(
            f"R must be a non-empty square matrix (stages x domains), got rows {shape}"
        )
    return t


def average_final(r: Matrix) -> float:
    """Mean bpb over every domain after the last stage (lower is better)."""
    t = _square(r)
    return sum(r[t - 1]) / t


def backward_transfer(r: Matrix) -> float | None:
    """BWT in bpb, the sign chosen so that negative means forgetting; None for one domain."""
    t = _square(r)
    if t < 2:
        return None
    return sum(r[i][i] - r[t - 1][i] for i in range(t - 1)) / (t - 1)


def forward_transfer(r: Matrix, baseline: Sequence[float]) -> float | None:
    """FWT in bpb against the untrained model's `baseline` bpb per domain (positive: the earlier
    domains helped); None for one domain."""
    t = _square(r)
    if len(baseline) != t:
        raise ValueError(f"the baseline has {len(baseline)} entries, R has {t} domains")
    if t < 2:
        return None
    return sum(baseline[i] - r[i - 1][i] for i in range(1, t)) / (t - 1)


def forgetting(r: Matrix) -> list[float]:
    """Chaudhry's forgetting per domain j < T-1, in bpb (positive: forgotten)."""
    t = _square(r)
    return [r[t - 1][j] - min(r[l][j] for l in range(t - 1)) for j in range(t - 1)]


def average_forgetting(r: Matrix) -> float | None:
    """Mean of `forgetting` over the domains before the last; None for one domain."""
    per_domain = forgetting(r)
    return sum(per_domain) / len(per_domain) if per_domain else None


def summarize(r: Matrix, baseline: Sequence[float] | None = None) -> dict:
    """Every metric above as a JSON-able dict (floats rounded to 6 places)."""

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    out = {
        "average_final_bpb": rounded(average_final(r)),
        "backward_transfer": rounded(backward_transfer(r)),
        "forgetting": [round(f, 6) for f in forgetting(r)],
        "average_forgetting": rounded(average_forgetting(r)),
    }
    if baseline is not None:
        out["forward_transfer"] = rounded(forward_transfer(r, baseline))
    return out
