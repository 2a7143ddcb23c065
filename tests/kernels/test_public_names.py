"""The public kernel names stay functions whatever is imported later.

The op folders share their names with the functions of ``nestdsl.kernels`` (``linear_attention``,
``delta_rule``, ``softmax_attention``, ...). Importing a subpackage for the first time binds it
on its parent package, so a lazily imported folder used to replace the function. The check runs
in a fresh interpreter: compiling and running models and importing every kernel module first
is exactly what used to shadow the names.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

# One shipped spec per kernel family the compiler lowers to.
SPECS = ("linear-attention", "deltanet", "gated-deltanet", "transformer", "titans-lmm", "moneta")

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, types, torch
    import nestdsl
    import nestdsl.kernels as K
    from nestdsl.kernels import DeepMemoryOptions
    from nestdsl.kernels.deep_memory import matrix_memory

    for spec in {specs!r}:
        model = nestdsl.compile(nestdsl.load(spec))
        with torch.no_grad():
            model(torch.randint(0, 256, (1, 8)))
    imported = []
    for info in pkgutil.walk_packages(K.__path__, K.__name__ + "."):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except ImportError:  # an optional backend whose dependency is missing
            pass
    assert "nestdsl.kernels.linear_attention.chunk" in imported, imported

    q = torch.randn(1, 5, 2, 4)
    g = torch.rand(1, 5, 2)
    w = [torch.zeros(1, 2, 4, 4)]
    calls = {{
        "linear_attention": lambda f: f(q, q, q),
        "delta_rule": lambda f: f(q, q, q, g),
        "gated_delta_rule": lambda f: f(q, q, q, g, -g),
        "softmax_attention": lambda f: f(q, q, q),
        "titans_linear": lambda f: f(q, q, q, g, g, g),
        "deep_memory": lambda f: f(q, q, q, g, g, g, w, DeepMemoryOptions(matrix_memory(4, 4))),
    }}
    for name, call in calls.items():
        o, _ = call(getattr(K, name))
        assert o.shape == (1, 5, 2, 4), (name, o.shape)
        for other in calls:  # still functions after every call
            f = getattr(K, other)
            assert callable(f) and not isinstance(f, types.ModuleType), (name, other, f)
    print("public names ok:", len(imported), "modules imported")
    """
).format(specs=SPECS)


def test_public_kernel_names_stay_callable():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "public names ok" in done.stdout
