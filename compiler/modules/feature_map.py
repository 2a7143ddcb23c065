"""Feature maps φ on a memory's keys and queries (ATLAS §3 eqs. 19-21; DeepTransformers eqs. 22-26).

Elementwise maps (`relu`, `elu1`) and `softmax` keep the key width. The two tensor-power maps
share one implementation:

    polynomial  φ_p(x) = [c_0, c_1 x, c_2 x^{⊗2}, ..., c_p x^{⊗p}]   c_i = g_i / sqrt(i!), g_i learned
    exp         φ*(x)  = [1, x, x^{⊗2}/sqrt(2!), ..., x^{⊗p}/sqrt(p!)]  (truncated at p)

so that φ(q)·φ(k) = Σ_{i≤p} a_i (q·k)^i with a_i = c_i^2: ATLAS's learnable Taylor
approximation of exp(q·k), whose coefficients gate the orders of the input features, and for
`exp` the degree-p Taylor polynomial of exp(q·k). The learned parameter is the gate g_i of each
order, per head, starting at 1: a_i = g_i^2 / i! starts at ATLAS's 1/i! exactly in every float
type (a stored 1/sqrt(i!) would not), and any real c_i is still reachable. φ* itself is infinite-dimensional
(DeepTransformers eq. 23); only a truncation can be built.

x^{⊗i} holds every product of i coordinates once per ordering. The map keeps each *unique*
monomial x^β (|β| = i, a combination with replacement of coordinates) once, scaled by the
square root of its multinomial count i! / Π_j β_j!: the inner products are the same
(Σ_β count(β) q^β k^β = (q·k)^i) at C(d + p, p) features instead of Σ_i d^i (d = 32, p = 2:
561 instead of 1057).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

POWER_MAPS = ("polynomial", "exp")


def power_width(d: int, degree: int) -> int:
    """Features of a tensor-power map: the monomials of degree <= p in d variables."""
    return math.comb(d + degree, degree)


def monomials(d: int, degree: int) -> list[list[tuple[int, ...]]]:
    """The unique monomials of each degree 0..p as sorted coordinate tuples."""
    return [list(itertools.combinations_with_replacement(range(d), i)) for i in range(degree + 1)]


def multinomial(beta: tuple[int, ...]) -> int:
    """How many orderings of the sorted tuple `beta` the full tensor power holds."""
    count = math.factorial(len(beta))
    for _, group in itertools.groupby(beta):
        count //= math.factorial(len(list(group)))
    return count


class FeatureMap(nn.Module):
    """φ for one memory: `[..., H, d] -> [..., H, width]`, per head H (`heads`)."""

    def __init__(self, kind: str | None, degree: int | None, d: int, heads: int):
        super().__init__()
        self.kind = None if kind == "identity" else kind
        self.degree = degree
        if self.kind not in POWER_MAPS:
            return
        terms = monomials(d, degree)
        # Degree-i monomials as a degree-(i-1) monomial (`parents`) times one coordinate
        # (`lasts`): each power costs one gather and one product per feature.
        for i in range(2, degree + 1):
            index = {beta: j for j, beta in enumerate(terms[i - 1])}
            parents = torch.tensor([index[beta[:-1]] for beta in terms[i]])
            lasts = torch.tensor([beta[-1] for beta in terms[i]])
            self.register_buffer(f"parents{i}", parents, persistent=False)
            self.register_buffer(f"lasts{i}", lasts, persistent=False)
        order = torch.cat([torch.full((len(t),), i) for i, t in enumerate(terms)])  # [width]
        counts = torch.tensor([float(multinomial(b)) for t in terms for b in t])  # [width]
        factorials = torch.tensor([float(math.factorial(i)) for i in range(degree + 1)])
        # Integers (exact in any float type); their roots are taken in the input's precision.
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("factorials", factorials, persistent=False)
        if self.kind == "polynomial":
            # Per head: every head is its own memory with its own keys (like the per-head step
            # sizes), so each may weight the orders of its features differently.
            self.gates = nn.Parameter(torch.ones(heads, degree + 1))  # [H, p + 1]: g_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind is None:
            return x
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "elu1":
            return F.elu(x) + 1.0
        if self.kind == "softmax":
            return x.softmax(dim=-1)
        blocks = [x.new_ones(*x.shape[:-1], 1), x]  # degrees 0 and 1
        power = x
        for i in range(2, self.degree + 1):
            parents, lasts = getattr(self, f"parents{i}"), getattr(self, f"lasts{i}")
            power = power[..., parents] * x[..., lasts]  # [..., H, C(d + i - 1, i)]
            blocks.append(power)
        c = self.factorials.to(x.dtype).rsqrt()  # [p + 1]: 1/sqrt(i!)
        if self.kind == "polynomial":
            c = self.gates.to(x.dtype) * c  # [H, p + 1]
        scale = c[..., self.order] * self.counts.to(x.dtype).sqrt()  # [H, width] or [width]
        return torch.cat(blocks, dim=-1) * scale  # [..., H, width]

    def extra_repr(self) -> str:
        if self.kind not in POWER_MAPS:
            return str(self.kind or "identity")
        learned = "learned" if self.kind == "polynomial" else "fixed"
        return f"{self.kind}, degree {self.degree}, {self.counts.numel()} features, {learned}"
