"""The Triton backend in the dispatcher: chosen for CUDA tensors, optional, reachable by name.

The first two tests run in a subprocess: one hides triton to show that importing nestdsl never
needs it, the other imports the Triton kernels compiled (not interpreted), which must not
happen in this process (the interpreter tests need triton imported under TRITON_INTERPRET).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from nestdsl.kernels import api, dispatch

from .helpers import RTOL, assert_close
from .triton_interp import fresh_dispatch, interpreter, load, rand_inputs  # noqa: F401

TRITON_OPS = ("gated_delta_rule", "linear_attention", "titans_linear")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_nestdsl_imports_and_dispatches_without_triton():
    out = _run("""
        import sys
        sys.modules["triton"] = None  # import triton now raises ImportError
        import nestdsl.compiler, nestdsl.kernels
        from nestdsl.kernels import dispatch
        for op in ("gated_delta_rule", "linear_attention", "titans_linear", "deep_memory"):
            print(op, dispatch.resolve(op, "cuda").__name__)
        try:
            dispatch.resolve("gated_delta_rule", "cuda", backend="triton")
        except ImportError:
            print("forced: ImportError")
    """)
    assert "gated_delta_rule gated_delta_rule_chunk" in out
    assert "linear_attention linear_attention_chunk" in out
    assert "titans_linear titans_linear_chunk" in out
    assert "deep_memory deep_memory_chunk" in out
    assert "forced: ImportError" in out


def test_cuda_tensors_pick_triton_and_cpu_tensors_are_refused():
    pytest.importorskip("triton")
    out = _run("""
        import os, torch
        os.environ.pop("TRITON_INTERPRET", None)
        from nestdsl.kernels import api, dispatch
        for op in ("gated_delta_rule", "linear_attention", "titans_linear", "softmax_attention"):
            print(op, dispatch.resolve(op, "cuda").__name__, dispatch.resolve(op, "cpu").__name__)
        q = torch.randn(1, 4, 1, 8)
        try:
            api.gated_delta_rule(q, q, q, torch.rand(1, 4, 1), backend="triton")
        except ValueError as e:
            print("refused:", e)
    """)
    for op in TRITON_OPS:
        assert f"{op} {op}_triton {op}_chunk" in out
    assert "softmax_attention softmax_attention_chunk softmax_attention_chunk" in out
    assert "refused: gated_delta_rule: the triton backend runs on CUDA tensors" in out


def test_public_api_reaches_the_triton_forms(interpreter, monkeypatch):  # noqa: F811
    """backend="triton" and NESTDSL_KERNEL_BACKEND=triton run the Triton kernels."""
    for module in ("delta_rule.triton", "linear_attention.triton", "titans_linear.triton"):
        load(module)
    fresh_dispatch(monkeypatch)
    q, k, v, s = rand_inputs(1, 19, 2, 16, 8, h0=True, dtype=torch.float32)
    beta, g = torch.rand(1, 19, 2), -torch.rand(1, 19, 2)
    kw = {"initial_state": s, "output_final_state": True, "chunk_size": 16}
    ref = api.gated_delta_rule(q, k, v, beta, g, backend="naive", **kw)
    got = api.gated_delta_rule(q, k, v, beta, g, backend="triton", **kw)
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    got_env = api.linear_attention(q, k, v, **kw)
    from nestdsl.kernels.titans_linear import titans_linear

    gates = (0.3 * torch.rand(1, 19, 2), torch.rand(1, 19, 2), 0.1 * torch.rand(1, 19, 2))
    got_t = titans_linear(q, k, v, *gates, chunk_size=4, initial_state=s, output_final_state=True)
    monkeypatch.delenv(dispatch.ENV_VAR)
    ref_la = api.linear_attention(q, k, v, backend="naive", **kw)
    ref_t = titans_linear(q, k, v, *gates, chunk_size=4, initial_state=s, output_final_state=True,
                          backend="naive")  # fmt: skip
    tol = RTOL[torch.float32]
    pairs = [("gdr o", ref[0], got[0]), ("gdr S", ref[1], got[1]),
             ("la o", ref_la[0], got_env[0]), ("la S", ref_la[1], got_env[1]),
             ("titans o", ref_t[0], got_t[0]), ("titans M", ref_t[1][0], got_t[1][0])]  # fmt: skip
    for name, a, b in pairs:
        assert_close(name, a, b, tol)


def test_forced_triton_leaves_ops_without_it_to_the_automatic_choice(monkeypatch):
    """NESTDSL_KERNEL_BACKEND=triton (or use_backend) runs a transformer: its softmax attention
    has no Triton form and takes the automatic one; backend="triton" on that op still refuses."""
    import nestdsl

    from ..compiler.helpers import load_small

    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.resolve("softmax_attention", "cpu").__name__ == "softmax_attention_chunk"
    with dispatch.use_backend("triton"):
        assert dispatch.resolve("softmax_attention", "cuda").__name__ == "softmax_attention_chunk"
    with pytest.raises(ValueError, match="no implementation of 'softmax_attention'"):
        dispatch.resolve("softmax_attention", "cpu", backend="triton")
    torch.manual_seed(0)
    model = nestdsl.compile(load_small("transformer"))
    tokens = torch.randint(0, 256, (1, 8))
    logits, _ = model(tokens)
    monkeypatch.delenv(dispatch.ENV_VAR)
    ref, _ = model(tokens)
    assert torch.equal(logits, ref)
