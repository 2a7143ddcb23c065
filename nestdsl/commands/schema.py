"""`nestdsl schema`: the JSON Schema of specs, for editors with a YAML language server."""

from __future__ import annotations

import json
from pathlib import Path

from nestdsl.errors import UserError
from nestdsl.spec.schema import Spec

HELP = "print the JSON Schema of the spec language (for editor completion and checking)"
EXAMPLE = "nestdsl schema -o nestdsl.schema.json"


def json_schema() -> dict:
    schema = Spec.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **schema, "title": "nestdsl spec"}  # fmt: skip


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")


def run(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as err:
            raise UserError(f"cannot write {args.output}: {err.strerror}") from None
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0
