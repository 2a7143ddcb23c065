"""Backend dispatch: forcing by keyword, context manager and environment; automatic choice."""

from __future__ import annotations

import pytest
import torch

from nestdsl.kernels import api, dispatch
from nestdsl.kernels.deep_memory import deep_memory_chunk, deep_memory_naive
from nestdsl.kernels.delta_rule import gated_delta_rule_chunk, gated_delta_rule_naive
from nestdsl.kernels.linear_attention import linear_attention_chunk, linear_attention_naive
from nestdsl.kernels.softmax_attention import softmax_attention_chunk, softmax_attention_naive
from nestdsl.kernels.titans_linear import titans_linear_chunk, titans_linear_naive

OPS = {
    "linear_attention": (linear_attention_naive, linear_attention_chunk),
    "gated_delta_rule": (gated_delta_rule_naive, gated_delta_rule_chunk),
    "softmax_attention": (softmax_attention_naive, softmax_attention_chunk),
    "titans_linear": (titans_linear_naive, titans_linear_chunk),
    "deep_memory": (deep_memory_naive, deep_memory_chunk),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


@pytest.fixture
def spy():
    """Register a recording 'spy' backend for every op; removed afterwards."""
    calls = []

    def make(op):
        def fn(*args, **kwargs):
            calls.append((op, args, kwargs))
            return "spy-output", None

        return fn

    for op in OPS:
        dispatch.register(op, "spy", make(op))
    yield calls
    for op in OPS:
        dispatch.unregister(op, "spy")


@pytest.mark.parametrize("op", list(OPS))
def test_default_on_cpu_is_chunk(op):
    assert dispatch.resolve(op, torch.device("cpu")) is OPS[op][1]
    assert dispatch.resolve(op, "cpu", backend="auto") is OPS[op][1]


@pytest.mark.parametrize("op", list(OPS))
def test_keyword_forces_backend(op):
    naive, chunk = OPS[op]
    assert dispatch.resolve(op, "cpu", backend="naive") is naive
    assert dispatch.resolve(op, "cpu", backend="chunk") is chunk


def test_context_manager_forces_and_nests():
    op = "linear_attention"
    with dispatch.use_backend("naive"):
        assert dispatch.resolve(op, "cpu") is linear_attention_naive
        with dispatch.use_backend("chunk"):
            assert dispatch.resolve(op, "cpu") is linear_attention_chunk
        with dispatch.use_backend("auto"):
            assert dispatch.resolve(op, "cpu") is linear_attention_chunk
        assert dispatch.resolve(op, "cpu") is linear_attention_naive
        # The keyword of a single call wins over the context.
        assert dispatch.resolve(op, "cpu", backend="chunk") is linear_attention_chunk
    assert dispatch.resolve(op, "cpu") is linear_attention_chunk


def test_context_manager_restores_after_exception():
    with pytest.raises(RuntimeError), dispatch.use_backend("naive"):
        raise RuntimeError("boom")
    assert dispatch.resolve("linear_attention", "cpu") is linear_attention_chunk


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "naive")
    assert dispatch.resolve("gated_delta_rule", "cpu") is gated_delta_rule_naive
    assert dispatch.resolve("gated_delta_rule", "cpu", backend="chunk") is gated_delta_rule_chunk
    with dispatch.use_backend("chunk"):
        assert dispatch.resolve("gated_delta_rule", "cpu") is gated_delta_rule_chunk
    monkeypatch.setenv(dispatch.ENV_VAR, "")
    assert dispatch.resolve("gated_delta_rule", "cpu") is gated_delta_rule_chunk


def test_unknown_backend_lists_valid_ones(monkeypatch):
    with pytest.raises(
        ValueError, match=r"unknown kernel backend 'fast'.*'auto', 'chunk', 'naive'"
    ):
        dispatch.resolve("linear_attention", "cpu", backend="fast")
    with pytest.raises(ValueError, match=r"'fast'.*valid backends: .*'naive'"):
        with dispatch.use_backend("fast"):
            pass
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"NESTDSL_KERNEL_BACKEND.*valid backends: .*'chunk'"):
        dispatch.resolve("linear_attention", "cpu")
    q = torch.randn(1, 3, 1, 4)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        api.linear_attention(q, q, q, backend="nope")


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown kernel op 'conv'"):
        dispatch.resolve("conv", "cpu")


def test_backend_registered_for_another_op_only():
    dispatch.register("linear_attention", "special", linear_attention_chunk)
    try:
        assert "special" in dispatch.valid_backends()
        with pytest.raises(ValueError, match="no implementation of 'gated_delta_rule'"):
            dispatch.resolve("gated_delta_rule", "cpu", backend="special")
    finally:
        dispatch.unregister("linear_attention", "special")
    assert "special" not in dispatch.valid_backends()


@pytest.fixture
def saved_registry(monkeypatch):
    """Registrations changed by a test are put back (the built-in Triton ones included)."""
    monkeypatch.setattr(dispatch, "_REGISTRY", {op: dict(b) for op, b in dispatch._REGISTRY.items()})


def test_auto_prefers_importable_triton_on_cuda_only(saved_registry):
    # resolve only looks at the device type, so no GPU is needed to test the choice.
    def fake_triton(*args, **kwargs):
        return None

    dispatch.register("linear_attention", "triton", fake_triton)
    assert dispatch.resolve("linear_attention", torch.device("cuda")) is fake_triton
    assert dispatch.resolve("linear_attention", "cpu") is linear_attention_chunk
    # An op without a triton implementation: chunk even on CUDA.
    assert dispatch.resolve("softmax_attention", "cuda") is softmax_attention_chunk
    dispatch.unregister("linear_attention", "triton")
    assert dispatch.resolve("linear_attention", "cuda") is linear_attention_chunk


def test_unimportable_lazy_backend_is_skipped_by_auto_but_raises_when_forced(saved_registry):
    dispatch.register("linear_attention", "triton", "nestdsl_no_such_module.kernel:fn")
    assert dispatch.resolve("linear_attention", "cuda") is linear_attention_chunk
    with pytest.raises(ImportError):
        dispatch.resolve("linear_attention", "cuda", backend="triton")


def test_register_rejects_bad_targets():
    with pytest.raises(TypeError):
        dispatch.register("linear_attention", "x", 42)
    with pytest.raises(ValueError, match="reserved"):
        dispatch.register("linear_attention", "auto", linear_attention_chunk)


def test_public_api_routes_through_dispatch(spy):
    q = torch.randn(1, 5, 2, 4)
    v = torch.randn(1, 5, 2, 3)
    beta = torch.rand(1, 5, 2)
    assert api.linear_attention(q, q, v, chunk_size=8, backend="spy")[0] == "spy-output"
    with dispatch.use_backend("spy"):
        api.gated_delta_rule(q, q, v, beta, beta.log())
        api.delta_rule(q, q, v, beta, scale=0.5)
    api.softmax_attention(q, q, v, window=3, backend="spy")
    ops = [c[0] for c in spy]
    assert ops == ["linear_attention", "gated_delta_rule", "gated_delta_rule", "softmax_attention"]
    assert spy[0][2]["chunk_size"] == 8 and spy[0][2]["scale"] == pytest.approx(0.5)
    assert spy[2][1][4] is None and spy[2][2]["scale"] == 0.5  # delta_rule passes g = None
    assert spy[3][2]["window"] == 3


def test_public_api_env_var_selects_backend(monkeypatch, spy):
    monkeypatch.setenv(dispatch.ENV_VAR, "spy")
    q = torch.randn(1, 5, 2, 4)
    assert api.linear_attention(q, q, q)[0] == "spy-output"
    monkeypatch.setenv(dispatch.ENV_VAR, "naive")
    o, _ = api.linear_attention(q, q, q)
    assert isinstance(o, torch.Tensor) and spy[-1][0] == "linear_attention" and len(spy) == 1


def test_memory_kernels_route_through_dispatch(spy, monkeypatch):
    """titans_linear and deep_memory follow the dispatcher too (the env var included), so a
    fused backend lands with one `register` line and NESTDSL_KERNEL_BACKEND reaches them."""
    from nestdsl.kernels.deep_memory import DeepMemoryOptions, deep_memory, matrix_memory
    from nestdsl.kernels.titans_linear import titans_linear

    x, g = torch.zeros(1, 2, 1, 3), torch.zeros(1, 2, 1)
    monkeypatch.setenv(dispatch.ENV_VAR, "spy")
    assert titans_linear(x, x, x, g, g, g)[0] == "spy-output"
    w = [torch.zeros(1, 1, 3, 3)]
    options = DeepMemoryOptions(matrix_memory(3, 3))
    assert deep_memory(x, x, x, g, g, g, w, options)[0] == "spy-output"
    assert [c[0] for c in spy] == ["titans_linear", "deep_memory"]
