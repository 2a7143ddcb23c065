"""`nestdsl schema`: the JSON Schema of specs, for editors with a YAML language server."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, BeforeValidator

from nestdsl.errors import UserError
from nestdsl.spec.common import shorthand
from nestdsl.spec.schema import Spec

HELP = "print the JSON Schema of the spec language (for editor completion and checking)"
EXAMPLE = "nestdsl schema -o nestdsl.schema.json"


def json_schema() -> dict:
    schema = Spec.model_json_schema(by_alias=True)
    _allow_shorthand(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **schema, "title": "nestdsl spec"}  # fmt: skip


def model_classes(root: type[BaseModel] = Spec) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root`, by class name (the `$defs` key), in field order."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ not in found:
                found[annotation.__name__] = annotation
                for field in annotation.model_fields.values():
                    visit(field.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(root)
    return found


def _allow_shorthand(schema: dict) -> None:
    """`objective: l2` means `{kind: l2}` (a `shorthand` validator): admit the bare kind too.

    Only kinds whose model needs no other key are listed, as only those validate.
    """
    defs = schema.get("$defs", {})
    for name, model in model_classes().items():
        node = schema if model is Spec else defs.get(name)
        if node is None:
            continue
        for field_name, field in model.model_fields.items():
            if not any(isinstance(m, BeforeValidator) and m.func is shorthand
                       for m in field.metadata):  # fmt: skip
                continue
            key = field.alias or field_name
            prop = node.get("properties", {}).get(key)
            kinds = _bare_kinds(prop, defs) if prop else []
            if not kinds:
                continue
            outer = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
            node["properties"][key] = {"anyOf": [{"enum": kinds, "type": "string"}, prop], **outer}


def _bare_kinds(node: Any, defs: dict) -> list[str]:
    kinds: list[str] = []
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
            kind = target.get("properties", {}).get("kind", {})
            if set(target.get("required", [])) <= {"kind"}:
                kinds += kind.get("enum", [kind["const"]] if "const" in kind else [])
        for sub in node.get("anyOf", []) + node.get("oneOf", []):
            kinds += [k for k in _bare_kinds(sub, defs) if k not in kinds]
    return kinds


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
