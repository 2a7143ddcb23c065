"""nestdsl: Nested Learning architectures as declarative specs, compiled to PyTorch.

    spec = nestdsl.load("hope")          # a shipped name or a YAML path; checked
    model = nestdsl.compile(spec)        # a torch.nn.Module: model(tokens, state) -> (logits, state)
    run = nestdsl.load_run("runs/hope")  # a trained run: run.model, run.spec, run.config, run.state
    opt = nestdsl.optimizer("dmgd", model.parameters(), lr=1e-3)  # any model, a declared optimizer
"""

from nestdsl.errors import Diagnostic, Position, SpecError, UserError
from nestdsl.spec.shipped import shipped_names
from nestdsl.spec.validate import CheckedSpec, check_text, load

__version__ = "0.1.0"


def compile(checked):  # noqa: A001 - the public name of the design
    """A checked spec (from `load`) as a `torch.nn.Module`: `model(tokens, state)`."""
    from nestdsl.compiler import compile as _compile  # torch loads only when compiling

    return _compile(checked)


def load_run(run_dir, device="cpu"):
    """A run folder written by `nestdsl train`, at its latest checkpoint: a `Run` with `model`
    (weights loaded, eval mode), `spec`, `config` (its TrainConfig) and `state` (step,
    checkpoint, last losses, carried memory)."""
    from nestdsl.train.run import load_run as _load_run  # torch loads only when needed

    return _load_run(run_dir, device)


def optimizer(name_or_path, params, **settings):
    """A `torch.optim.Optimizer` from an optimizer spec: a shipped name (`sgd-momentum`,
    `adamw`, `delta-momentum`, `m3`, `dmgd`) or a YAML path, with `settings` (`lr`, `momentum`,
    `weight_decay`, `betas`, ...) over the spec's defaults; state_dict / load_state_dict work."""
    from nestdsl.optim.library import optimizer as _optimizer  # torch loads only when needed

    return _optimizer(name_or_path, params, **settings)


__all__ = [
    "CheckedSpec",
    "Diagnostic",
    "Position",
    "SpecError",
    "UserError",
    "check_text",
    "compile",
    "load",
    "load_run",
    "optimizer",
    "shipped_names",
]
