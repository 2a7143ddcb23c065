"""`nestdsl list`: the shipped specs, each with the one-line description its file opens with."""

from __future__ import annotations

import argparse

from nestdsl.errors import SpecError
from nestdsl.spec.loader import load_yaml
from nestdsl.spec.shipped import read_spec, shipped_names

HELP = "list the shipped specs with their one-line descriptions"
EXAMPLE = "nestdsl list"


def add_arguments(parser: argparse.ArgumentParser) -> None:  # noqa: ARG001 - no flags
    pass


def describe(name: str) -> str:
    """The spec's `description:` (only parsed, not checked: listing stays instant)."""
    raw, file = read_spec(name)
    try:
        data = load_yaml(raw, file).data
    except SpecError:
        return "(unreadable: run nestdsl validate " + name + ")"
    text = data.get("description") if isinstance(data, dict) else None
    return " ".join(str(text).split()) if text else ""


def run(args: argparse.Namespace) -> int:  # noqa: ARG001 - the command takes no options
    names = shipped_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}".rstrip())
    print(f"\n{len(names)} specs; `nestdsl show NAME` for levels and sizes, "
          "`nestdsl train NAME` to train one")  # fmt: skip
    return 0
