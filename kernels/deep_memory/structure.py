"""The MLP memory function of a deep in-context memory and its closed-form backward.

Titans §3.1 (deep neural long-term memory, eq. 13 "LMM"), Atlas / Hope (SwiGLU-style gated
memory) and Miras §3 (memory architecture): per head the memory is

    M(x) = x + N(W_L s(... s(W_1 x)))            (residual; without ``x +`` otherwise)
    M(x) = x + N(W_1 (s(W_2 x) * W_3 x))         (gated, depth 2)

with no biases, a hidden width ``expansion * d_in``, an activation ``s`` and ``N`` a
non-affine layer norm over the features or the identity. ``weights[i]`` is ``W_{i+1}``.

Nested Learning §4.1 reads every layer as an associative memory from its input ``a_l`` to
its local error ``delta_l = dl / dz_l`` (``z_l = W_l a_l``): the gradient of a token's loss
w.r.t. ``W_l`` is the rank-one ``delta_l a_l^T``. :func:`layer_errors` computes every
``delta_l`` by hand (README.md eqs. B1-B4) with plain torch ops, so the result stays
differentiable and an outer ``backward`` picks up the second-order terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "silu", "relu", "tanh", "identity")
NORMS = ("layernorm", "none")


@dataclass(frozen=True)
class MemoryStructure:
    """Shape of the per-head memory MLP (a frozen, hashable config).

    d_in: key / query width; d_out: value width (must equal d_in when residual);
    depth: number of weight matrices L >= 1 (2 when gated); expansion: hidden width is
    ``expansion * d_in`` unless ``hidden_dim`` gives it (a memory read through a feature map
    keeps the hidden width of its keys before the map, ``expansion * d``, not of the wider
    ``φ(k)``); activation in ACTIVATIONS; norm in NORMS, with ``norm_eps`` its variance floor
    (the spec's `norm_eps`, whose default and reason are in nestdsl/spec/memory.py).
    """

    d_in: int
    d_out: int
    depth: int = 2
    expansion: int = 4
    activation: str = "gelu"
    residual: bool = True
    norm: str = "none"
    norm_eps: float = 0.1  # nestdsl.spec.memory.NORM_EPS (tests/kernels check they agree)
    gated: bool = False
    hidden_dim: int | None = None

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_out < 1 or self.depth < 1 or self.expansion < 1:
            raise ValueError(f"MemoryStructure: sizes must be >= 1, got {self}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise ValueError(f"MemoryStructure: hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if self.gated and self.depth != 2:
            raise ValueError(f"the gated memory has depth 2, got depth={self.depth}")
        if self.residual and self.d_in != self.d_out:
            raise ValueError(
                f"a residual memory needs d_in == d_out, got {self.d_in}, {self.d_out}"
            )

    @property
    def hidden(self) -> int:
        return self.hidden_dim or self.expansion * self.d_in

    @property
    def dims(self) -> tuple[int, ...]:
        """Feature widths along the memory: (d_in, hidden, ..., d_out)."""
        if self.gated:
            return (self.d_in, self.hidden, self.d_out)
        return (self.d_in, *([self.hidden] * (self.depth - 1)), self.d_out)

    def shapes(self) -> list[tuple[int, int]]:
        """(out, in) of every weight matrix, in the order of ``weights``."""
        if self.gated:
            h = self.hidden
            return [(self.d_out, h), (h, self.d_in), (h, self.d_in)]  # W_1, W_2 (gate), W_3 (up)
        dims = self.dims
        return [(dims[i + 1], dims[i]) for i in range(self.depth)]


def matrix_memory(d_in: int, d_out: int) -> MemoryStructure:
    """The linear matrix memory ``M(x) = W x``, W [d_out, d_in]."""
    return MemoryStructure(d_in, d_out, depth=1, activation="identity", residual=False)


def init_params(
    structure: MemoryStructure,
    num_heads: int,
    *,
    std: float | None = None,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Per-head initial weights [H, out, in] (what the outer level learns); ``std`` None means
    ``gain / sqrt(in)`` (variance-preserving at gain 1)."""
    params = []
    for out, inp in structure.shapes():
        s = gain / math.sqrt(inp) if std is None else std
        w = torch.randn(num_heads, out, inp, generator=generator, dtype=dtype, device=device)
        params.append(w * s)
    return params


def initial_weights(params: Sequence[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Per-head parameters [H, out, in] expanded to the in-context state [B, H, out, in].

    ``expand`` keeps the graph to the parameters, so the outer level meta-learns them.
    """
    return [p.unsqueeze(0).expand(batch_size, *p.shape) for p in params]


def activation(name: str, z: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(z)
    if name == "silu":
        return F.silu(z)
    if name == "relu":
        return torch.relu(z)
    if name == "tanh":
        return torch.tanh(z)
    return z


def activation_grad(name: str, z: torch.Tensor) -> torch.Tensor:
    """ds/dz written out (not autograd), differentiable again where s is smooth."""
    if name == "gelu":  # s = z Phi(z): Phi(z) + z phi(z)
        cdf = 0.5 * (1.0 + torch.erf(z * (0.5**0.5)))
        pdf = torch.exp(-0.5 * z * z) * (2.0 * math.pi) ** -0.5
        return cdf + z * pdf
    if name == "silu":  # s = z sig(z): sig (1 + z (1 - sig))
        sig = torch.sigmoid(z)
        return sig * (1.0 + z * (1.0 - sig))
    if name == "relu":
        return (z > 0).to(z.dtype)
    if name == "tanh":
        return 1.0 - torch.tanh(z) ** 2
    return torch.ones_like(z)


def activation_backward(name: str, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``g * s'(z)``. For gelu it is torch's fused ``gelu_backward``, one pass where the written-out
    derivative takes nine, and differentiable twice more (the outer backward, and Hope's CMS
    gradient taken with ``create_graph``); silu's fused op has no second derivative."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(g, z)
    return g * activation_grad(name, z)


@dataclass
class ForwardCache:
    """What the closed-form backward needs, aligned with ``weights``.

    inputs[i]: the input a of matrix i [..., C, in]; preacts[i]: its output z [..., C, out];
    normed / rstd: layer-norm output and 1/sqrt(var + eps) (None without a norm).
    """

    inputs: list[torch.Tensor] = field(default_factory=list)
    preacts: list[torch.Tensor] = field(default_factory=list)
    normed: torch.Tensor | None = None
    rstd: torch.Tensor | None = None


# A layer application: (matrix index, input [..., C, in]) -> output [..., C, out]. Plain
# weights use ``a @ W^T``; the chunk form plugs in per-token weights (dual form) here.
LayerApply = Callable[[int, torch.Tensor], torch.Tensor]


def forward_layers(
    structure: MemoryStructure, apply: LayerApply, x: torch.Tensor
) -> tuple[torch.Tensor, ForwardCache]:
    """Evaluate the memory on x [..., C, d_in] with matrix products given by ``apply``.

    Returns y [..., C, d_out] and the cache of layer inputs / pre-activations.
    """
    cache = ForwardCache()
    act = structure.activation
    if structure.gated:
        u = apply(1, x)  # [..., C, h] gate branch
        g = apply(2, x)  # [..., C, h] linear branch
        m = activation(act, u) * g
        z = apply(0, m)  # [..., C, d_out]
        cache.inputs, cache.preacts = [m, x, x], [z, u, g]
    else:
        a = x
        for i in range(structure.depth):
            z = apply(i, a)
            cache.inputs.append(a)
            cache.preacts.append(z)
            if i < structure.depth - 1:
                a = activation(act, z)
    out = z
    if structure.norm == "layernorm":
        mu = z.mean(dim=-1, keepdim=True)
        var = (z - mu).pow(2).mean(dim=-1, keepdim=True)
        cache.rstd = torch.rsqrt(var + structure.norm_eps)
        cache.normed = (z - mu) * cache.rstd
        out = cache.normed
    y = x + out if structure.residual else out
    return y, cache


def memory_forward(
    structure: MemoryStructure, weights: Sequence[torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, ForwardCache]:
    """M(x) with one set of weights: weights [..., out, in], x [..., C, d_in]."""
    return forward_layers(structure, lambda i, a: a @ weights[i].transpose(-1, -2), x)


def layer_errors(
    structure: MemoryStructure,
    weights: Sequence[torch.Tensor],
    cache: ForwardCache,
    grad_y: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Local errors ``delta_i = dl/dz_i`` [..., C, out_i] of every matrix (README eqs. B1-B4).

    grad_y: dl/dy [..., C, d_out]. The residual path carries no weight, so only the ``N``
    branch matters. The per-token weight gradient of matrix i is ``delta_i a_i^T``. ``scale``
    [..., C, 1]: token t's forward ran with every matrix scaled by ``scale_t`` (the decayed
    weights of local retention), so its errors flow back through the scaled matrices.
    """

    def back(g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:  # (scale_t W)^T g
        return g @ W if scale is None else scale * (g @ W)

    g = grad_y
    if structure.norm == "layernorm":  # B2: dz = rstd (g - mean(g) - n mean(g n))
        n = cache.normed
        g = cache.rstd * (g - g.mean(dim=-1, keepdim=True) - n * (g * n).mean(dim=-1, keepdim=True))
    act = structure.activation
    if structure.gated:  # B4
        u, lin = cache.preacts[1], cache.preacts[2]
        dm = back(g, weights[0])  # [..., C, h]
        return [g, activation_backward(act, dm * lin, u), dm * activation(act, u)]
    deltas = [g]
    for i in range(structure.depth - 2, -1, -1):  # B3: delta_i = s'(z_i) * W_{i+1}^T delta_{i+1}
        g = activation_backward(act, back(g, weights[i + 1]), cache.preacts[i])
        deltas.append(g)
    return deltas[::-1]
