"""Pass `resolve_dims`: every size of the spec as an integer (the checks proved they resolve)."""

from __future__ import annotations

from nestdsl.compiler.plan import Plan

from nestdsl.spec.dims import evaluate


def resolve_dims(plan: Plan) -> Plan:
    spec = plan.spec
    plan.dims = dict(spec.dims)
    plan.d_model = evaluate(spec.embed.dim, plan.dims)
    plan.vocab = evaluate(spec.embed.vocab, plan.dims)
    plan.done.append("resolve_dims")
    return plan
