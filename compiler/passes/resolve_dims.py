"""Pass `resolve_dims`: every size of the spec as an integer (the checks proved they resolve),
and the level that trains the embedding, the head and whatever names no level."""

from __future__ import annotations

from nestdsl.compiler.plan import Plan

from nestdsl.graph.build import outer_level
from nestdsl.spec.dims import evaluate


def resolve_dims(plan: Plan) -> Plan:
    spec = plan.spec
    plan.graph = plan.checked.graph
    plan.dims = dict(spec.dims)
    plan.d_model = evaluate(spec.embed.dim, plan.dims)
    plan.vocab = evaluate(spec.embed.vocab, plan.dims)
    plan.outer = outer_level(spec)
    plan.done.append("resolve_dims")
    return plan
