"""nestdsl: Nested Learning architectures as declarative specs, compiled to PyTorch.

    spec = nestdsl.load("hope")          # a shipped name or a YAML path; checked
    model = nestdsl.compile(spec)        # a torch.nn.Module: model(tokens, state) -> (logits, state)
"""

from nestdsl.errors import Diagnostic, Position, SpecError, UserError
from nestdsl.spec.shipped import shipped_names
from nestdsl.spec.validate import CheckedSpec, check_text, load

__version__ = "0.1.0"


def compile(checked):  # noqa: A001 - the public name of the design
    """A checked spec (from `load`) as a `torch.nn.Module`: `model(tokens, state)`."""
    from nestdsl.compiler import compile as _compile  # torch loads only when compiling

    return _compile(checked)


__all__ = [
    "CheckedSpec",
    "Diagnostic",
    "Position",
    "SpecError",
    "UserError",
    "check_text",
    "compile",
    "load",
    "shipped_names",
]
