"""The spec reference (`docs/reference.md`), generated from the pydantic schema.

Every model gets a section: its docstring, then one row per key with its type, default and
description. Every `kind:`/`op:` union gets a table of its variants. The text depends only on
the schema, so it is the same on every run; `python -m nestdsl.spec.reference` rewrites the file
(a test fails when it is stale).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nestdsl.commands.schema import json_schema, model_classes
from nestdsl.spec import common
from nestdsl.spec.schema import VERSION, Spec

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "reference.md"

_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
_DIM_PATTERN = "^[A-Za-z0-9_ +\\-*/()]+$"


def _annotation_description(alias: Any) -> str | None:
    for meta in typing.get_args(alias)[1:]:
        if getattr(meta, "description", None):
            return meta.description
    return None


# Descriptions every size or parameter field would repeat; the intro says them once.
_GENERIC = {_annotation_description(common.Dim), _annotation_description(common.Param)} - {None}


def generate() -> str:
    """The whole reference, as Markdown."""
    return _Writer(json_schema()).run()


class _Writer:
    def __init__(self, schema: dict):
        self.schema = schema
        self.defs: dict[str, dict] = schema.get("$defs", {})
        self.classes = model_classes(Spec)
        self.done: set[str] = set()
        self.unions: dict[tuple, str] = {}  # variant mapping -> section title
        self.written: set[tuple] = set()
        self.out: list[str] = []

    # ------------------------------------------------------------ layout

    def run(self) -> str:
        self._intro()
        queue: list[tuple[str, dict]] = [("Spec", self.schema)]
        while queue:
            name, node = queue.pop(0)
            if name in self.done:
                continue
            self.done.add(name)
            self._model(name, node, level=2)
            for field, sub in node.get("properties", {}).items():
                queue.extend(self._children(field, sub))
        text = "\n".join(self.out).rstrip() + "\n"
        return re.sub(r"\n{3,}", "\n\n", text)

    def _children(self, field: str, node: dict, owner: str = "") -> list[tuple[str, dict]]:
        """Models a property leads to; unions are written here, with their variants (titled
        after `owner` too when they belong to a variant, so they never take a top-level title)."""
        found: list[tuple[str, dict]] = []
        for sub in _walk(node):
            if "discriminator" in sub and "oneOf" in sub:
                self._union(field, sub, owner)
            elif "$ref" in sub:
                name = sub["$ref"].rsplit("/", 1)[-1]
                found.append((name, self.defs[name]))
        return found

    def _intro(self) -> None:
        self.out += [
            "# nestdsl spec reference",
            "",
            "<!-- Generated from the pydantic schema by `python -m nestdsl.spec.reference`; "
            "do not edit by hand. -->",
            "",
            f"A spec is one YAML mapping that starts with `nestdsl: {VERSION}`. Every mapping is "
            "closed: an unknown key is an error (with a suggestion when one is close). Many "
            "mappings are one of several variants, chosen by their `kind:` (or, for block "
            "nodes, `op:`) key; each variant is listed with its own keys below.",
            "",
            "## Sizes, names and parameters",
            "",
            "- **name**: letters, digits and `_`, not starting with a digit (`d_model`, `q0`). "
            "Names refer to dims, levels, memories and block tensors.",
            "- **size**: an integer, a name from `dims:`, or an arithmetic expression of both "
            "with `+ - * / //` and parentheses (`4 * d_model`, `d_model // n_heads`); it must "
            "evaluate to a positive whole number.",
            "- **param** (step sizes and gates): a constant number, "
            "`{kind: learned, init: ...}` (see [Learned](#learned)), or the name of a block "
            "tensor (a data-dependent value).",
            "- Where a type lists bare kinds before the variants, `NAME` is short for "
            "`{kind: NAME}` (`objective: l2`, `init: zeros`).",
            "- YAML 1.2 scalars: only `true`/`false` are booleans (`on` and `no` are names), "
            "and `3e-4` is a number.",
            "",
        ]

    def _union(self, field: str, node: dict, owner: str = "") -> None:
        disc = node["discriminator"]["propertyName"]
        mapping = node["discriminator"]["mapping"]
        key = self._register(field, node, owner)
        if key in self.written:
            return
        self.written.add(key)
        title = self.unions[key]
        self.out += [f"## {title}", "", f"Chosen by `{disc}:`.", ""]
        self.out += [f"| `{disc}:` | variant | summary |", "| --- | --- | --- |"]
        members = [m["$ref"].rsplit("/", 1)[-1] for m in node["oneOf"] if "$ref" in m]
        for name in members:
            tags = [tag for tag, ref in mapping.items() if ref.endswith("/" + name)]
            order = {t: i for i, t in enumerate(self._tags_in_order(name, disc, tags))}
            tags.sort(key=lambda t: order.get(t, len(order)))
            summary = _first_paragraph(self.defs[name].get("description", ""))
            self.out.append(
                f"| {', '.join(f'`{t}`' for t in tags)} | [{name}](#{_slug(name)}) | "
                f"{_cell(summary)} |"
            )
        self.out.append("")
        for name in members:
            if name not in self.done:
                self.done.add(name)
                self._model(name, self.defs[name], level=3)
        pending = list(members)  # what the variants lead to, after the variants, at any depth
        while pending:
            name = pending.pop(0)
            for prop, sub in self.defs[name].get("properties", {}).items():
                for child, child_node in self._children(prop, sub, owner=name):
                    if child not in self.done:
                        self.done.add(child)
                        self._model(child, child_node, level=3)
                        pending.append(child)

    def _register(self, field: str, node: dict, owner: str = "") -> tuple:
        """Name a union after the first key it appears under (so types can link to it)."""
        key = tuple(sorted(node["discriminator"]["mapping"].items()))
        self.unions.setdefault(key, f"`{field}:` variants" + (f" of {owner}" if owner else ""))
        return key

    def _tags_in_order(self, name: str, disc: str, tags: list[str]) -> list[str]:
        prop = self.defs[name].get("properties", {}).get(disc, {})
        return prop.get("enum") or ([prop["const"]] if "const" in prop else sorted(tags))

    def _model(self, name: str, node: dict, level: int) -> None:
        cls = self.classes.get(name)
        doc = node.get("description") or (inspect.cleandoc(cls.__doc__) if cls and
                                          cls.__doc__ and cls.__doc__ != BaseModel.__doc__
                                          else "")  # fmt: skip
        if name == "Spec":
            doc = inspect.cleandoc(Spec.__doc__ or "")
        self.out += [f"{'#' * level} {name}", ""]
        if doc:
            self.out += [doc, ""]
        props = node.get("properties", {})
        if not props:
            self.out += ["(no keys)", ""]
            return
        for key, prop in props.items():
            for sub in _walk(prop):
                if "discriminator" in sub and "oneOf" in sub:
                    self._register(key, sub, name if level == 3 else "")
        required = set(node.get("required", []))
        fields = _fields_by_alias(cls) if cls else {}
        self.out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, prop in props.items():
            field = fields.get(key)
            default = "required" if key in required else _default(field, prop)
            description = prop.get("description")
            if description in _GENERIC:
                description = None
            self.out.append(
                f"| `{key}` | {_cell(self._type(prop))} | {_cell(default)} | "
                f"{_cell(description or '')} |"
            )
        self.out.append("")

    # ------------------------------------------------------------ types

    def _type(self, node: dict) -> str:
        if "discriminator" in node and "oneOf" in node:
            disc = node["discriminator"]["propertyName"]
            key = tuple(sorted(node["discriminator"]["mapping"].items()))
            title = self.unions.get(key)
            return f"one of the [{title}](#{_slug(title)})" if title else f"a `{disc}:` variant"
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return f"[{name}](#{_slug(name)})"
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if _is_dim(options):
                return "size"
            forms = []
            for o in options:  # `every`: "integer > 0, `step` or `never`"
                forms += [f"`{_flow(v)}`" for v in o["enum"]] if "enum" in o else [self._type(o)]
            return _either(list(dict.fromkeys(forms)))
        if "const" in node:
            return f"`{_flow(node['const'])}`"
        if "enum" in node:
            return _either([f"`{_flow(v)}`" for v in node["enum"]])
        kind = node.get("type")
        if kind in ("integer", "number"):
            return kind + _bounds(node)
        if kind == "string":
            if node.get("pattern") == _NAME_PATTERN:
                return "name"
            if node.get("pattern") == _DIM_PATTERN:
                return "size expression"
            return "string"
        if kind == "boolean":
            return "boolean"
        if kind == "array":
            if "prefixItems" in node:
                return "[" + ", ".join(self._type(i) for i in node["prefixItems"]) + "]"
            item = self._type(node.get("items", {}))
            text = "list of " + (item + "s" if item in _PLURAL else item)
            return text + _counts(node, "Items", "item")
        if kind == "object":
            values = node.get("additionalProperties")
            if "patternProperties" in node:
                pattern, values = next(iter(node["patternProperties"].items()))
                keys = "name" if pattern == _NAME_PATTERN else "string"
            else:
                keys = "string"
            if isinstance(values, dict):
                return f"mapping of {keys} to {self._type(values)}" + _counts(
                    node, "Properties", "entry"
                )
            return "mapping"
        return "any"


# ---------------------------------------------------------------- helpers


def _walk(node: Any):
    """Every sub-schema of a property, stopping at unions and references."""
    if not isinstance(node, dict):
        return
    if ("discriminator" in node and "oneOf" in node) or "$ref" in node:
        yield node
        return
    for key in ("anyOf", "oneOf", "prefixItems"):
        for sub in node.get(key, []):
            yield from _walk(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key])
    for sub in node.get("patternProperties", {}).values():
        yield from _walk(sub)


def _fields_by_alias(cls: type[BaseModel]) -> dict[str, Any]:
    return {(f.alias or name): f for name, f in cls.model_fields.items()}


def _default(field: Any, prop: dict) -> str:
    if field is not None:
        value = field.get_default(call_default_factory=True)
    else:
        value = prop.get("default")
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    if value is None:
        return "none"
    return f"`{_flow(value)}`"


def _flow(value: Any) -> str:
    """A value written as YAML flow style: `{kind: zeros}`, `[0.9, 0.95]`, `true`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


_PLURAL = {"name", "size", "integer", "number", "string", "boolean"}


def _is_dim(options: list[dict]) -> bool:
    kinds = [(o.get("type"), o.get("pattern")) for o in options]
    return kinds == [("integer", None), ("string", _DIM_PATTERN)]


def _bounds(node: dict) -> str:
    parts = []
    for key, op in (("exclusiveMinimum", ">"), ("minimum", ">="),
                    ("exclusiveMaximum", "<"), ("maximum", "<=")):  # fmt: skip
        if key in node:
            parts.append(f"{op} {_flow(node[key])}")
    return (" " + ", ".join(parts)) if parts else ""


def _counts(node: dict, what: str, noun: str) -> str:
    low, high = node.get(f"min{what}"), node.get(f"max{what}")
    if low is not None and low == high:
        return f" ({low} {noun}{'s' if low != 1 else ''})"
    if low is not None and high is not None:
        return f" ({low} to {high} {noun}s)"
    if low is not None:
        return f" (at least {low})"
    if high is not None:
        return f" (at most {high})"
    return ""


def _either(options: list[str]) -> str:
    if len(options) <= 1:
        return "".join(options)
    return ", ".join(options[:-1]) + " or " + options[-1]


def _first_paragraph(text: str) -> str:
    return text.strip().split("\n\n")[0].replace("\n", " ")


def _slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nestdsl.spec.reference", description="write the spec reference"
    )
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_PATH,
                        help=f"where to write it (default: {DEFAULT_PATH})")  # fmt: skip
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file is not up to date, write nothing")  # fmt: skip
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.output.read_text("utf-8") if args.output.is_file() else None
        if current != text:
            print(f"{args.output} is stale: run `python -m nestdsl.spec.reference`",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, "utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
