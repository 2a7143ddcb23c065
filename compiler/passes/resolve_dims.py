"""Pass `resolve_dims`: every size of the spec as an integer (the checks proved they resolve),
and the level that trains the embedding, the head and whatever names no level."""

from __future__ import annotations

from nestdsl.compiler.plan import Plan
from nestdsl.errors import Diagnostic, SpecError
from nestdsl.graph.build import outer_level
from nestdsl.spec.dims import evaluate

LARGEST = 2**31 - 1  # a tensor axis torch indexes with a 32-bit int on every backend
MOST_LAYERS = 4096  # block repetitions: the plan and the module hold one layer for each


def resolve_dims(plan: Plan) -> Plan:
    spec = plan.spec
    plan.dims = dict(spec.dims)
    plan.d_model = evaluate(spec.embed.dim, plan.dims)
    plan.vocab = evaluate(spec.embed.vocab, plan.dims)
    # The declared sizes first; a tensor's derived size (`4 * d_model`) only if they fit.
    sizes = [(("dims", k), v) for k, v in plan.dims.items()]
    derived = [(("embed", "dim"), plan.d_model), (("embed", "vocab"), plan.vocab)]
    derived += [(("blocks", b, "nodes", t), n) for b, block in enumerate(spec.blocks)
                for (name, t), shape in plan.checked.shapes.items()
                if name == (block.name or f"block{b}") for n in shape]  # fmt: skip
    repeats = [Diagnostic("size", f"`repeat` is {n:,}: more than {MOST_LAYERS:,} layers, and the "
                          "compiler builds one per repetition", plan.at("blocks", b, "repeat"))
               for b, block in enumerate(spec.blocks)
               if (n := evaluate(block.repeat, plan.dims)) > MOST_LAYERS]  # fmt: skip
    if repeats:
        raise SpecError(repeats)
    for group in (sizes, derived):
        too_large = [Diagnostic("size", f"size {n:,} is larger than {LARGEST:,}, the largest "
                                "tensor axis the compiler builds", plan.at(*path))
                     for path, n in group if n > LARGEST]  # fmt: skip
        if too_large:
            raise SpecError(list(dict.fromkeys(too_large)))
    plan.outer = outer_level(spec)
    plan.done.append("resolve_dims")
    return plan
