"""`nestdsl show SPEC`: the levels of a spec from the fastest to the slowest, and each outer
level's optimizer (its memories of the gradients, period and schedule: NL §4)."""

from __future__ import annotations

from nestdsl.checks.levels import slowness
from nestdsl.compiler.plan import AUTO_RECOMPUTE_FROM
from nestdsl.errors import UserError
from nestdsl.spec.validate import load

HELP = "print a spec's levels ordered by update frequency, with members and parameter counts"
EXAMPLE = "nestdsl show hope"


def add_arguments(parser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="shipped spec name or YAML path")
    parser.add_argument("--after", metavar="PASS",
                        help="print the compiler's plan after PASS (resolve_dims, expand_blocks, "
                        "schedule_levels, lower_memories, pick_kernels, group_memories)")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec value, e.g. dims.d_model=64")  # fmt: skip


def level_rows(checked) -> list[tuple[str, str, str, str, str]]:
    """(level, period, members, parameters, state) from the fastest level to the slowest."""
    from nestdsl.compiler.count import count_by_level

    spec = checked.spec
    counts = count_by_level(checked.plan)
    rows = []
    for name, level in sorted(spec.levels.items(), key=lambda kv: _order(kv[1])):
        members = [m for m, mem in spec.memories.items() if mem.level == name]
        outer = name == checked.outer_level()
        if not outer:  # blocks the spec puts on this level (the outer one owns "blocks")
            members += [f"block {b.name or i}" for i, b in enumerate(spec.blocks) if b.level == name]
        inits = [m for m, mem in spec.memories.items() if mem.init.kind == "learned"
                 and (mem.init.by == name or (outer and mem.init.by is None))]  # fmt: skip
        # Many meta-learned initial states (Hope has 8) would make the row too wide to read.
        owned = [f"init({m})" for m in inits] if len(inits) <= 3 else [f"{len(inits)} initial states"]
        if outer:
            owned = ["embed", "blocks", "head", *owned]
        if isinstance(level.every, int):
            period = f"{level.every} token" + ("s" if level.every != 1 else "")
        else:
            period = level.every
            every = getattr(level.optimizer, "period", 1)
            if every != 1:
                period = f"{every} steps"
        count = counts[name]
        rows.append((name, period, ", ".join(members + owned) or "-",
                     f"{count.parameters:,}" if count.parameters else "-",
                     f"{count.state:,}" if count.state else "-"))  # fmt: skip
    return rows


def _order(level) -> tuple:
    """Fastest first: in-context periods, then outer levels by their period in steps, then never."""
    return (*slowness(level.every), getattr(level.optimizer, "period", 1))


def optimizer_rows(checked) -> list[tuple[str, str]]:
    """(level, its optimizer in one line) for every trained outer level, fastest first."""
    from nestdsl.optim import describe_optimizer

    levels = checked.spec.levels
    return [(name, describe_optimizer(level.optimizer.model_dump(mode="json")))
            for name, level in sorted(levels.items(), key=lambda kv: _order(kv[1]))
            if level.every == "step" and level.optimizer is not None]  # fmt: skip


def notes(checked) -> list[str]:
    """What makes the model slower than its chunked form, and why (from the plan)."""
    plan, out = checked.plan, []
    for layer in plan.layers:
        if layer.segment and layer.name.endswith(".0"):
            out.append(f"{layer.block_name}: runs sequentially, {layer.segment} token"
                       f"{'s' if layer.segment != 1 else ''} at a time ({layer.segment_why})")  # fmt: skip
    if plan.task_window:
        out.append(f"the model runs in task-loss windows of {plan.task_window} tokens: each "
                   "window's loss is differentiated to update the CMS memories")  # fmt: skip
    if plan.recompute_unit:
        out.append(f"training on sequences of {AUTO_RECOMPUTE_FROM:,} tokens or more recomputes "
                   f"spans of a multiple of {plan.recompute_unit} tokens in backward, so "
                   "activation memory grows with the span, not the sequence")  # fmt: skip
    elif plan.span_unit:
        out.append(f"`nestdsl train --recompute spans` recomputes spans of a multiple of "
                   f"{plan.span_unit} tokens in backward (less memory, one more forward pass)")  # fmt: skip
    return out


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:3]) + "".join(
        f"  {{:>{w}}}" for w in widths[3:])  # fmt: skip
    return "\n".join([fmt.format(*header), line, *(fmt.format(*r) for r in rows)])


def run(args) -> int:
    checked = load(args.spec, args.overrides)
    if args.after:
        from nestdsl.compiler import PASSES, run_passes

        if args.after not in PASSES:
            raise UserError(f"unknown pass `{args.after}`; passes: {', '.join(PASSES)}")
        print(run_passes(checked, until=args.after).describe())
        return 0
    print(f"{checked.spec.name} ({checked.file})")
    if checked.spec.description:
        print(checked.spec.description)
    print()
    print(summary(checked))
    rows = optimizer_rows(checked)
    width = max(len(name) for name, _ in rows)
    print("\noptimizers (the memories of the gradients each outer level keeps; docs/language.md):")
    for name, line in rows:
        print(f"  {name:<{width}}  {line}")
    return 0


def summary(checked) -> str:
    """The level table with its legend and the plan's cost notes (also printed by `train`)."""
    lines = [table(level_rows(checked), ("level", "every", "members", "parameters", "state")),
             "", "parameters: trained by the level's optimizer (frozen under `never`); state: "
             "numbers of in-context memory weights per sequence"]  # fmt: skip
    from nestdsl.compiler.count import flops_per_token

    flops = flops_per_token(checked.plan)
    lines.append(f"forward: about {flops / 1e6:.2f} MFLOP per token (matrix products and memory "
                 "updates; attention over 1,024 tokens of context)")  # fmt: skip
    return "\n".join(lines + [f"note: {line}" for line in notes(checked)])
