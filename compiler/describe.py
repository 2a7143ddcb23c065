"""The plan as text, after any pass: what `nestdsl show SPEC --after PASS` prints.

Layers that repeat one block with the same plan are printed once ("layer.0-1"); every line
says what the pass decided and, where it is not obvious, why.
"""

from __future__ import annotations

from nestdsl.compiler.plan import AUTO_RECOMPUTE_FROM


def describe(plan) -> str:
    done = plan.done
    lines = [f"plan for `{plan.spec.name}` after: {', '.join(done) or '(nothing)'}"]
    if "resolve_dims" in done:
        dims = ", ".join(f"{k}={v}" for k, v in plan.dims.items())
        lines.append(f"  dims: {dims}")
        lines.append(f"  outer level: `{plan.outer}` (trains the embedding, the head and every "
                     "parameter that names no level)")  # fmt: skip
    if "schedule_levels" in done:
        if plan.task_window:
            lines.append(f"  task-loss window: {plan.task_window} tokens (the model runs window "
                         "by window; each window's loss updates the CMS memories)")  # fmt: skip
        if plan.recompute_unit:
            lines.append(f"  recomputed spans: multiples of {plan.recompute_unit} tokens from "
                         f"{AUTO_RECOMPUTE_FROM:,}-token sequences on (training keeps the state "
                         "between spans; backward reruns each span)")  # fmt: skip
    for names, layer in _groups(plan):
        lines += _layer(plan, names, layer, done)
    return "\n".join(lines)


def _groups(plan):
    """Consecutive layers of one block with identical plans, as (label, first layer)."""
    groups: list[tuple[list[str], object, str]] = []
    for layer in plan.layers:
        text = "\n".join(_layer(plan, ["?"], layer, plan.done)).replace(layer.name + ".", "")
        if groups and groups[-1][2] == text and groups[-1][1].block_name == layer.block_name:
            groups[-1][0].append(layer.name)
        else:
            groups.append(([layer.name], layer, text))
    return [(names, layer) for names, layer, _ in groups]


def _label(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    first, last = names[0], names[-1]
    return f"{first}-{last.rsplit('.', 1)[-1]}"


def _layer(plan, names, layer, done) -> list[str]:
    label = _label(names)
    head = f"  {label}: block `{layer.block_name}`, parameters trained by `{layer.level}`"
    if len(names) > 1:
        head += f" ({len(names)} layers, same plan)"
    out = [head]
    if "schedule_levels" in done:
        if layer.segment:
            out.append(f"    runs sequentially, {_tokens(layer.segment)} at a time: "
                       f"{layer.segment_why}")  # fmt: skip
        else:
            out.append("    runs the whole span at once (no memory feeds its own writes)")
        steps, after = [], []
        for kind, name in layer.steps:
            (after if (kind, name) in layer.after_segments else steps).append(
                _step(layer, kind, name))
        out.append("    steps: " + ", ".join(steps))
        if after:
            out.append("    then once over the whole span (no segment needs them): "
                       + ", ".join(after))
    if "expand_blocks" in done:
        shapes = ", ".join(f"{t} {list(s)}" + _rank(layer, t) for t, s in layer.shapes.items())
        out.append(f"    tensors (per position): {shapes}")
    for m in layer.memories.values():
        out += _memory(m, done)
    if "group_memories" in done:
        out += _grouping(layer)
    return out


def _grouping(layer) -> list[str]:
    out = []
    for g in layer.groups.values():
        first = layer.memories[g.members[0]]
        out.append(f"    memory group `{g.name}`: one {first.kernel} call with {g.heads} heads "
                   f"({' + '.join(str(layer.memories[d].heads) for d in g.members)}), the "
                   "members' keys, values, gates and states side by side (same level, chunk, "
                   "reset, structure, lowered options and read orders)")  # fmt: skip
        if g.defer:
            out.append(f"      writes once per chunk of {first.chunk}: every read is at the chunk "
                       "start, so a span inside a chunk keeps its inputs for the chunk's end")  # fmt: skip
        for reads in g.feedback:
            out.append(f"      one feedback read: {', '.join(reads)}")
        for reads in g.reads:
            out.append(f"      one read with the update: {', '.join(reads)}")
    for decl, why in layer.ungrouped.items():
        out.append(f"    runs alone: `{decl}` ({why})")
    return out


def _rank(layer, tensor: str) -> str:
    """` (rank r)` after a low-rank linear's tensor (W = W_down W_up, Miras §5.4)."""
    rank = getattr(layer.block.nodes.get(tensor), "rank", None)
    return "" if rank is None else f" (rank {rank})"


def _step(layer, kind: str, name: str) -> str:
    if kind == "op":
        return name
    if kind == "feedback":
        return f"{name} (feedback read)"
    if kind == "feedback_group":
        return f"{name} (one feedback read)"
    if kind == "group":
        reads = [r for rs in layer.groups[name].reads for r in rs]
        return f"[{name} update" + (f": {', '.join(reads)}]" if reads else "]")
    m = layer.memories[name]
    reads = f": {', '.join(m.reads)}" if m.reads else ""
    return f"[{name} update{reads}]"


def _memory(m, done) -> list[str]:
    heads = f"{m.heads} head" + ("s" if m.heads != 1 else "")
    line = (f"    memory {m.decl}: {m.memory.structure.kind}, {heads}, {m.key_dim} -> "
            f"{m.value_dim}, level `{m.level}` (every {m.every})")  # fmt: skip
    out = [line]
    if "schedule_levels" in done and isinstance(m.every, int):
        if m.chunk == 1:
            when = "changes after every token"
        else:
            when = (f"changes every {m.chunk} tokens; gradients inside a chunk are taken at "
                    "the chunk-start state, reads see the chunk's earlier writes")  # fmt: skip
        if m.reset_every:
            when += f"; reset every {m.reset_every} tokens"
        out.append(f"      {when}")
        if m.feedback:
            out.append(f"      feedback reads (answered from the carried state): "
                       f"{', '.join(m.feedback)}")  # fmt: skip
    if m.options is not None:
        out.append(f"      lowered: {m.options.describe()}")
    if m.kernel:
        out.append(f"      kernel: {m.kernel} ({m.why})")
    return out


def _tokens(n: int) -> str:
    return f"{n} token" + ("s" if n != 1 else "")
