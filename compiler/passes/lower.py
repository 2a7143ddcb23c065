"""Pass `lower`: the finished plan becomes a `torch.nn.Module` (see modules/model.py)."""

from __future__ import annotations

from nestdsl.compiler.modules.model import CompiledModel
from nestdsl.compiler.plan import Plan


def lower(plan: Plan) -> CompiledModel:
    return CompiledModel(plan)
