"""Shared helpers for the kernel tests: relative-error comparison and poisoned buffers."""

from __future__ import annotations

import torch

# Relative tolerance per dtype, as demanded of every chunk form against its loop reference.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def relative_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    """``||ref - got|| / ||ref||`` in float64 (``||got||`` when ``ref`` is exactly zero)."""
    ref64, got64 = ref.detach().double(), got.detach().double()
    denom = ref64.norm().item()
    diff = (ref64 - got64).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, rtol: float) -> None:
    """Assert ``got`` matches ``ref`` to relative error ``rtol``, naming the op/tensor on failure."""
    assert got is not None, f"{name}: got None"
    assert tuple(got.shape) == tuple(ref.shape), (
        f"{name}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    )
    assert got.dtype == ref.dtype, f"{name}: dtype {got.dtype} != reference {ref.dtype}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values in result"
    assert torch.isfinite(ref).all(), f"{name}: non-finite values in reference"
    err = relative_error(ref, got)
    assert err <= rtol, f"{name}: relative error ||ref-got||/||ref|| = {err:.3e} > {rtol:.1e}"


def nan_poisoned(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """An output buffer full of NaN, so a kernel that skips writing any element is caught."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def grads(
    out: torch.Tensor,
    upstream: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    state: torch.Tensor | None = None,
    state_upstream: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of ``<out, upstream> + <state, state_upstream>`` w.r.t. each named input."""
    loss = (out * upstream).sum()
    if state is not None:
        loss = loss + (state * state_upstream).sum()
    names = list(inputs)
    values = torch.autograd.grad(loss, [inputs[n] for n in names])
    return dict(zip(names, values, strict=True))
