"""`nestdsl validate SPEC...`: check specs; one line each when fine, every error when not."""

from __future__ import annotations

import sys

from nestdsl.errors import UserError
from nestdsl.spec.validate import load

HELP = "check specs and report every error at its YAML line"
EXAMPLE = "nestdsl validate hope specs/transformer.yaml my-nesting.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="shipped spec name or YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a spec value, e.g. dims.d_model=64")  # fmt: skip


def summary(checked) -> str:
    spec = checked.spec
    n_warn = len(checked.warnings)
    return (f"{checked.file}: {spec.name}: {len(spec.levels)} levels, {len(spec.memories)} "
            f"memories, {len(spec.blocks)} block{'s' if len(spec.blocks) != 1 else ''}"
            + (f", {n_warn} warning{'s' if n_warn != 1 else ''}" if n_warn else ""))  # fmt: skip


def run(args) -> int:
    failed = 0
    for name in args.specs:
        try:
            checked = load(name, args.overrides)
        except UserError as err:  # a SpecError lists every diagnostic
            failed += 1
            print(f"FAIL {name}: {err}", file=sys.stderr)
            continue
        print(f"ok   {summary(checked)}")
        for warning in checked.warnings:
            print(f"  {warning}")
    return 1 if failed else 0
