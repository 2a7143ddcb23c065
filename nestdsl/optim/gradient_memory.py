"""The memories a declared optimizer keeps per parameter: writes and reads (NL §4, eqs. 33-53).

Each memory is an associative memory whose context flow is the parameter's gradient stream:
values are the gradient g, keys are `one` (a key-less memory: momentum, NL eqs. 10-13), g
itself, or `unit_grad`: g over its norm (per row for matrix and MLP memories, whose keys are
rows; over the whole parameter for elementwise ones). Unit keys make what a matrix or MLP
memory reads scale like the values (the gradient), not like a power of the gradient's size: NL's
delta rules assume normalized keys too. A write is one step of the memory's rule on its objective,

    m <- retention * m - lr * ∇L(m)                         (gd)
    m <- retention * m - erase <m, ĝ> ĝ - lr * ∇L(m)       (dgd, ĝ = g / sqrt(||g||² + eps²))

with ∇L taken at the state before the retention factor (global retention, as Titans eq. 13),

    dot:  L(m) = -<m(k), g>           (momentum; Adam's moments; linear attention of gradients)
    l2:   L(m) = 1/2 ||m(k) - g||²    (the delta rule on the gradients)

and the structure decides what `m(k)` is:

    elementwise   m ⊙ k, a state shaped like the parameter; read: the state itself
    matrix        P k for every row k of the gradient (its last axis), P [d, d]; read: P q
    mlp           W2 act(W1 k) on the rows (deep momentum, eq. 50); read: at q

where the query q is the current gradient made a key the same way.

The functions here are pure tensor code on one parameter's state; `declared.py` runs them.
"""

from __future__ import annotations

import math

import torch

from nestdsl.spec.optimizer import GradDGD, GradMemory

ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
}


UNIT_EPS = 1e-8  # k = g / sqrt(||g||² + UNIT_EPS²): a zero gradient (row) gives a zero key


def keys_of(memory: GradMemory, grad: torch.Tensor) -> torch.Tensor:
    """The memory's keys (and queries) from the gradient, as rows [R, d] (matrix, MLP) or
    shaped like the parameter (elementwise)."""
    if memory.structure.kind == "elementwise":
        if memory.keys == "unit_grad":
            return grad / grad.square().sum().add(UNIT_EPS**2).sqrt()
        return grad
    g = rows(grad)  # [R, d]
    if memory.keys == "unit_grad":
        return g / g.square().sum(-1, keepdim=True).add(UNIT_EPS**2).sqrt()  # [R, d]
    return g


def rows(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter-shaped tensor as rows of its last axis: [R, d] (a vector is one row)."""
    if tensor.ndim == 0:
        return tensor.reshape(1, 1)
    return tensor.reshape(-1, tensor.shape[-1])


def state_names(name: str, memory: GradMemory) -> list[str]:
    """The state tensors one memory keeps per parameter (keys of the optimizer's state)."""
    kind = memory.structure.kind
    if kind == "mlp":
        return [f"{name}.W1", f"{name}.W2"]
    return [name]


def init_state(name: str, memory: GradMemory, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zeros, except an MLP's first layer: random from its seed (W2 = 0 makes the first read
    zero, and a zero W1 would keep W2's gradient at zero forever)."""
    structure = memory.structure
    if structure.kind == "elementwise":
        return {name: torch.zeros_like(param, memory_format=torch.preserve_format)}
    width = rows(param).shape[-1]
    if structure.kind == "matrix":
        return {name: param.new_zeros(width, width)}
    generator = torch.Generator().manual_seed(structure.seed)
    first = torch.randn(structure.hidden, width, generator=generator, dtype=torch.float64)
    return {
        f"{name}.W1": (first / math.sqrt(width)).to(param),  # [h, d]
        f"{name}.W2": param.new_zeros(width, structure.hidden),  # [d, h]
    }


def _mlp(w1: torch.Tensor, w2: torch.Tensor, keys: torch.Tensor, activation: str) -> torch.Tensor:
    return ACTIVATIONS[activation](keys @ w1.T) @ w2.T  # [R, h] -> [R, d]


def write(
    name: str,
    memory: GradMemory,
    state: dict,
    grad: torch.Tensor,
    retention: float,
    lr: float,
    erase: float = 0.0,
    eps: float = 1e-8,
) -> None:
    """One write of `grad` into the memory `name` (in place on `state`)."""
    kind = memory.structure.kind
    if kind == "elementwise":
        _write_elementwise(state[name], memory, grad, retention, lr, erase, eps)
    elif kind == "matrix":
        _write_matrix(state[name], memory, grad, retention, lr)
    else:
        _write_mlp(name, memory, state, grad, retention, lr)


def _write_elementwise(m, memory, grad, retention, lr, erase, eps) -> None:
    one = memory.keys == "one"
    key = None if one else keys_of(memory, grad)
    if memory.objective == "l2":
        # ∇L = (m ⊙ k - g) ⊙ k at the state before the retention factor.
        error = m - grad if one else m * key - grad
        step = error if one else error * key
        m.mul_(retention).sub_(step, alpha=lr)
        return
    if isinstance(memory.rule, GradDGD) and erase:
        # erase <m, ĝ> ĝ = erase <m, g> g / (||g||² + eps²), with m before the retention factor;
        # the two scalars are reduced in float32 at least, and stay on the device.
        work = torch.float64 if grad.dtype == torch.float64 else torch.float32
        wide = grad.to(work)
        coefficient = (m.to(work) * wide).sum() / ((wide * wide).sum() + eps * eps)
        m.mul_(retention).addcmul_(grad, coefficient, value=-erase)
    else:
        m.mul_(retention)
    # -lr ∇L = lr k ⊙ g for the dot objective.
    if one:
        m.add_(grad, alpha=lr)
    else:
        m.addcmul_(key, grad, value=lr)


def _write_matrix(p, memory, grad, retention, lr) -> None:
    g, k = rows(grad), keys_of(memory, grad)  # values and keys: the gradient's rows [R, d]
    if memory.objective == "dot":
        gradient = -(g.T @ k)  # -Σ_r v_r k_r^T  [d, d]
    else:
        gradient = (k @ p.T - g).T @ k  # Σ_r (P k_r - v_r) k_r^T  [d, d]
    p.mul_(retention).sub_(gradient, alpha=lr)


def _write_mlp(name, memory, state, grad, retention, lr) -> None:
    w1, w2 = state[f"{name}.W1"], state[f"{name}.W2"]
    g, k = rows(grad), keys_of(memory, grad)  # values and keys [R, d]
    with torch.enable_grad():
        a, b = w1.detach().requires_grad_(), w2.detach().requires_grad_()
        out = _mlp(a, b, k, memory.structure.activation)  # [R, d]
        if memory.objective == "dot":
            loss = -(out * g).sum()
        else:
            loss = 0.5 * (out - g).square().sum()
        grad_a, grad_b = torch.autograd.grad(loss, (a, b))
    w1.mul_(retention).sub_(grad_a, alpha=lr)
    w2.mul_(retention).sub_(grad_b, alpha=lr)


def read(name: str, memory: GradMemory, state: dict, grad: torch.Tensor) -> torch.Tensor:
    """What the update reads, shaped like the parameter (a new tensor)."""
    kind = memory.structure.kind
    if kind == "elementwise":
        return state[name].clone()
    q = keys_of(memory, grad)  # [R, d]: the query is the current gradient, as a key
    if kind == "matrix":
        out = q @ state[name].T  # [R, d]
    else:
        out = _mlp(state[f"{name}.W1"], state[f"{name}.W2"], q, memory.structure.activation)
    return out.reshape(grad.shape)
