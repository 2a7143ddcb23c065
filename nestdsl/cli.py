"""The `nestdsl` command line: one subcommand per module in `nestdsl/commands/`.

Every subcommand module exposes `HELP` (one line), `EXAMPLE` (a command line), `add_arguments(parser)`
and `run(args) -> int`. User mistakes end as one-line messages and exit code 1, never tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nestdsl import __version__
from nestdsl.allocator import keep_freed_memory
from nestdsl.errors import UserError

COMMANDS = ["validate", "show", "schema", "train", "generate", "viz", "list", "eval", "explore", "compare"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nestdsl",
        description="Nested Learning architectures as declarative specs: check, show, compile, train.",
        epilog="example: nestdsl list  |  nestdsl validate hope  |  nestdsl train transformer --steps 200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nestdsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"nestdsl.commands.{name}")
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=f"example: {module.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # every step reuses the last one's blocks (nestdsl/allocator.py)
    try:
        return args._run(args)
    except UserError as err:
        print(f"nestdsl {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nestdsl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nestdsl list | head`: the reader left, which is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
