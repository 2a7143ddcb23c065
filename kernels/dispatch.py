"""Backend dispatch for the memory kernels.

Every kernel op (``linear_attention``, ``gated_delta_rule``, ``softmax_attention``,
``titans_linear``, ``deep_memory``) has several interchangeable implementations, called
*backends*:

* ``"naive"``  - the per-token loop, the reference oracle;
* ``"chunk"``  - the chunk-parallel PyTorch form;
* ``"triton"`` - fused GPU kernels (``kernels/<op>/triton.py``): forward and backward for
  ``linear_attention``, ``gated_delta_rule``, ``titans_linear`` and ``deep_memory`` (the
  memories its kernels cover; under ``create_graph`` its backward is the chunk form's, which
  stays differentiable). They import ``triton`` lazily:
  importing nestdsl never requires it.

An implementation is registered either as a callable or as a lazy import path
``"module:attribute"`` (a leading ``.`` is relative to this package). Lazy paths are only
imported when the backend is first chosen, so a backend whose dependencies are missing
(e.g. Triton on a CPU-only machine) costs nothing until it is asked for.

Choice of backend for one call, first match wins:

1. the ``backend=`` keyword of the call;
2. the innermost active :func:`use_backend` context;
3. the environment variable ``NESTDSL_KERNEL_BACKEND`` (read at every call);
4. automatic: ``"triton"`` if the tensors live on CUDA and a Triton implementation is
   registered and importable, otherwise ``"chunk"`` (``"naive"`` if no chunk form exists).

The name ``"auto"`` (or ``None``, or an empty environment variable) selects step 4
explicitly, which lets an inner ``use_backend("auto")`` undo an outer forced backend. A
backend forced by steps 2-3 that an op does not have (``softmax_attention`` has no Triton
form) leaves that op to step 4; the ``backend=`` keyword of step 1 is strict.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

ENV_VAR = "NESTDSL_KERNEL_BACKEND"
AUTO = "auto"

KernelFn = Callable[..., object]


@dataclass
class _Entry:
    """One registered implementation; ``target`` is a callable or a lazy import path."""

    target: KernelFn | str
    loaded: KernelFn | None = None
    error: BaseException | None = field(default=None, repr=False)

    def load(self) -> KernelFn:
        if self.loaded is not None:
            return self.loaded
        if self.error is not None:
            raise self.error
        if callable(self.target):
            self.loaded = self.target
            return self.loaded
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name, package=__package__)
            self.loaded = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            self.error = exc
            raise
        return self.loaded

    def importable(self) -> bool:
        try:
            self.load()
        except (ImportError, AttributeError):
            return False
        return True


_REGISTRY: dict[str, dict[str, _Entry]] = {}
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nestdsl_kernel_backend", default=None
)


def register(op_name: str, backend_name: str, fn: KernelFn | str) -> None:
    """Register ``fn`` as the ``backend_name`` implementation of ``op_name``.

    ``fn`` is a callable or a lazy import path ``"module:attribute"``. Registering the same
    (op, backend) pair again replaces the previous implementation.
    """
    if backend_name == AUTO:
        raise ValueError(f"{AUTO!r} is reserved for automatic backend choice")
    if not (callable(fn) or (isinstance(fn, str) and ":" in fn)):
        raise TypeError(f"fn must be a callable or a 'module:attribute' path, got {fn!r}")
    _REGISTRY.setdefault(op_name, {})[backend_name] = _Entry(fn)


def unregister(op_name: str, backend_name: str) -> None:
    """Remove one registration (used by tests and by plugins that replace a backend)."""
    del _REGISTRY[op_name][backend_name]
    if not _REGISTRY[op_name]:
        del _REGISTRY[op_name]


def valid_backends() -> tuple[str, ...]:
    """All accepted backend names: ``"auto"`` plus every name registered for some op."""
    names = {name for backends in _REGISTRY.values() for name in backends}
    return (AUTO, *sorted(names))


def _op_entries(op_name: str) -> dict[str, _Entry]:
    try:
        return _REGISTRY[op_name]
    except KeyError:
        raise ValueError(
            f"unknown kernel op {op_name!r}; registered ops: {sorted(_REGISTRY)}"
        ) from None


def _check_name(name: str, source: str) -> str:
    if name not in valid_backends():
        valid = ", ".join(repr(n) for n in valid_backends())
        raise ValueError(
            f"unknown kernel backend {name!r} (from {source}); valid backends: {valid}"
        )
    return name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force ``name`` for every kernel call inside the ``with`` block (``None``/"auto": automatic)."""
    if name is not None:
        _check_name(name, "use_backend")
    token = _FORCED.set(AUTO if name is None else name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _requested(backend: str | None) -> str:
    if backend is not None:
        return _check_name(backend, "backend= argument")
    forced = _FORCED.get()
    if forced is not None:
        return forced
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _check_name(env, f"environment variable {ENV_VAR}")
    return AUTO


def _auto(entries: dict[str, _Entry], device: torch.device) -> str:
    if device.type == "cuda" and "triton" in entries and entries["triton"].importable():
        return "triton"
    for name in ("chunk", "naive"):
        if name in entries:
            return name
    return sorted(entries)[0]


def resolve(
    op_name: str, device: torch.device | str | None, backend: str | None = None
) -> KernelFn:
    """Return the implementation of ``op_name`` to run on ``device``.

    ``backend`` forces a backend for this call; otherwise the context / environment /
    automatic rules of the module docstring apply. Raises ``ValueError`` for an unknown op or
    backend name, or for a backend that exists but has no implementation of this op.
    """
    entries = _op_entries(op_name)
    name = _requested(backend)
    if backend is None and name not in entries:
        # A backend forced for every call (context or environment) applies to the ops that
        # have it: NESTDSL_KERNEL_BACKEND=triton must not stop a model at its softmax
        # attention, which has no Triton form (SDPA is already fused on a GPU).
        name = AUTO
    if name == AUTO:
        dev = torch.device("cpu") if device is None else torch.device(device)
        name = _auto(entries, dev)
    if name not in entries:
        raise ValueError(
            f"kernel backend {name!r} has no implementation of {op_name!r}; "
            f"available for this op: {', '.join(repr(n) for n in sorted(entries))}"
        )
    return entries[name].load()


# Built-in implementations. A new backend is one more line here.
register("linear_attention", "naive", ".linear_attention.naive:linear_attention_naive")
register("linear_attention", "chunk", ".linear_attention.chunk:linear_attention_chunk")
register("gated_delta_rule", "naive", ".delta_rule.naive:gated_delta_rule_naive")
register("gated_delta_rule", "chunk", ".delta_rule.chunk:gated_delta_rule_chunk")
register("softmax_attention", "naive", ".softmax_attention.naive:softmax_attention_naive")
register("softmax_attention", "chunk", ".softmax_attention.chunk:softmax_attention_chunk")
register("titans_linear", "naive", ".titans_linear.naive:titans_linear_naive")
register("titans_linear", "chunk", ".titans_linear.chunk:titans_linear_chunk")
register("linear_attention", "triton", ".linear_attention.triton:linear_attention_triton")
register("gated_delta_rule", "triton", ".delta_rule.triton:gated_delta_rule_triton")
register("titans_linear", "triton", ".titans_linear.triton:titans_linear_triton")
register("deep_memory", "naive", ".deep_memory.naive:deep_memory_naive")
register("deep_memory", "chunk", ".deep_memory.chunk:deep_memory_chunk")
# Triton runs the covered memories (deep_memory/triton.py: unsupported) and hands every other
# one to the chunk form with a warning that names the reason.
register("deep_memory", "triton", ".deep_memory.triton:deep_memory_triton")
