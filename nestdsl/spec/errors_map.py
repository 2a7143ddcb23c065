"""Pydantic validation errors, rewritten as diagnostics at the YAML position they concern."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from nestdsl.errors import Diagnostic
from nestdsl.spec.loader import SourceMap
from nestdsl.spec.schema import Spec


def diagnostics_from(err: ValidationError, data: Any, source: SourceMap) -> list[Diagnostic]:
    grouped: dict[tuple, list[dict]] = {}
    for e in err.errors(include_url=False):
        path = _data_path(e["loc"], data)
        grouped.setdefault((path, e["type"] == "extra_forbidden" and e["loc"][-1]), []).append(e)
    out = []
    for (path, _), errors in grouped.items():
        out.append(_diagnostic(path, errors, source))
    return sorted(out, key=lambda d: (d.pos.line, d.pos.col) if d.pos else (0, 0))


def _data_path(loc: tuple, data: Any) -> tuple:
    """Drop the parts of a pydantic `loc` that are union tags, not keys of the data."""
    path: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and part == "in_" and "in" in node:
            path.append("in")
            node = node["in"]
    return tuple(path)


def _diagnostic(path: tuple, errors: list[dict], source: SourceMap) -> Diagnostic:
    e = errors[0]
    kind = e["type"]
    where = ".".join(str(p) for p in path) or "(top level)"
    if kind == "extra_forbidden":
        key = e["loc"][-1]
        allowed = _allowed_keys(e["loc"][:-1])
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        listed = "allowed keys here: " + ", ".join(allowed) if allowed else None
        hint = f"did you mean `{close[0]}`? {listed}" if close else listed
        if not close:  # a key of another kind of the same union (`momentum` on a `gd` rule)
            others = _sibling_keys(e["loc"][:-1])
            near = difflib.get_close_matches(str(key), list(others), n=1, cutoff=0.6)
            if near:
                tag = e["loc"][-2]
                hint = (f"did you mean `{near[0]}`? it belongs to `kind: {others[near[0]]}`, "
                        f"not `{tag}`; {listed}")  # fmt: skip
        return Diagnostic(
            "unknown-key", f"unknown key `{key}`", source.find(path + (key,), key=True), hint
        )
    if e["loc"] and e["loc"][-1] == "[key]":  # a mapping key that is not a valid name
        return Diagnostic(
            "bad-value",
            f"key `{_show(path[-1] if path else e['input'])}` is not a valid name",
            source.find(path, key=True),
            _NAME_RULE,
        )
    if kind == "invalid_key":
        return Diagnostic(
            "bad-value",
            f"key `{_show(e['loc'][-1])}` is not a valid name",
            source.find(path, key=True),
            _NAME_RULE,
        )
    if kind == "missing" and all(x["type"] == "missing" for x in errors):
        keys = list(dict.fromkeys(x["loc"][-1] for x in errors))
        if isinstance(keys[0], int):  # a tuple given too few items
            return Diagnostic(
                "bad-value",
                f"`{where}` has too few items: item {keys[0] + 1} is missing",
                source.find(path),
                _field_description(e["loc"][:-1]),
            )
        keys = ["in" if k == "in_" else k for k in keys]
        owner = "the spec" if not path else f"`{where}`"
        listed = ", ".join(f"`{k}`" for k in keys)
        return Diagnostic(
            "missing-key",
            f"{owner} needs the key{'s' if len(keys) > 1 else ''} {listed}",
            source.find(path, key=True),
            _field_description(e["loc"]) if len(keys) == 1 else None,
        )
    if kind == "union_tag_invalid":
        ctx = e.get("ctx", {})
        return Diagnostic(
            "unknown-kind",
            f"`{ctx.get('tag')}` is not a known {ctx.get('discriminator', 'kind').strip(chr(39))}"
            f" at `{where}`",
            source.find(path + (ctx.get("discriminator", "").strip("'"),)),
            _did_you_mean(ctx.get("tag"), ctx.get("expected_tags", "")),
        )
    if kind == "union_tag_not_found":
        disc = e.get("ctx", {}).get("discriminator", "'kind'").strip("'")
        return Diagnostic(
            "missing-key",
            f"`{where}` needs `{disc}:` to say which kind it is",
            source.find(path, key=True),
            _field_description(e["loc"]),
        )
    if kind == "literal_error" and len(errors) == 1:
        expected = e.get("ctx", {}).get("expected", "")
        return Diagnostic(
            "bad-value",
            f"`{e['input']}` is not allowed at `{where}`",
            source.find(path),
            _did_you_mean(e["input"], expected),
        )
    if len({x["type"] for x in errors}) > 1:  # an untagged union: no member matched
        forms = list(dict.fromkeys(f for x in errors for f in _forms(x)))
        return Diagnostic(
            "bad-value",
            f"`{_show(e['input'])}` at `{where}` is not " + _either(forms),
            source.find(path),
            _field_description(e["loc"]),
        )
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return Diagnostic(
            "bad-value",
            f"`{where}` must be a mapping (`key: value` lines or `{{...}}`), "
            f"not {_describe(e['input'])}",
            source.find(path),
            _field_description(e["loc"]),
        )
    if kind == "list_type":
        return Diagnostic(
            "bad-value",
            f"`{where}` must be a list (`- item` lines or `[...]`), not {_describe(e['input'])}",
            source.find(path),
            _field_description(e["loc"]),
        )
    if kind == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == _NAME_PATTERN:
        return Diagnostic(
            "bad-value",
            f"`{_show(e['input'])}` at `{where}` is not a valid name",
            source.find(path),
            _NAME_RULE,
        )
    if kind in _SINGLE_FORMS:
        return Diagnostic(
            "bad-value",
            f"`{_show(e['input'])}` at `{where}` is not {_SINGLE_FORMS[kind]}",
            source.find(path),
            _field_description(e["loc"]),
        )
    return Diagnostic("bad-value", f"`{where}`: {_short(e)}", source.find(path))


# A value of the wrong type where only one type fits.
_SINGLE_FORMS = {
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "`true` or `false`",
    "bool_parsing": "`true` or `false`",
}


_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME_RULE = "names are letters, digits and `_`, and do not start with a digit"


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string `{_show(value)}`"
    if isinstance(value, list):
        return f"a list `{_show(value)}`"
    if isinstance(value, bool):
        return f"the boolean `{str(value).lower()}`"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "an empty value"
    return f"`{_show(value)}`"


def _forms(e: dict) -> list[str]:
    """What one member of an untagged union would have accepted, in a few words."""
    if e["type"] == "literal_error":
        expected = str(e.get("ctx", {}).get("expected", ""))
        options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",")]
        return [f"`{o}`" for o in options if o]
    if e["type"] == "too_short":
        n = e.get("ctx", {}).get("min_length", 1)
        return [f"a list of at least {n} item{'s' if n != 1 else ''}"]
    if e["type"] == "greater_than":
        return [f"a number greater than {e.get('ctx', {}).get('gt')}"]
    return [_FORMS.get(e["type"], _short(e))]


_FORMS = {
    "int_from_float": "an integer",
    "finite_number": "a finite number",
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "string_type": "a name",
    "string_pattern_mismatch": "a name",
    "model_type": "a `{kind: ...}` mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
}


def _either(forms: list[str]) -> str:
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


def _short(e: dict) -> str:
    msg = e["msg"].removeprefix("Value error, ").replace(" after validation", "")
    return msg[0].lower() + msg[1:] if msg else e["type"]


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML (`true`, not `True`)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _did_you_mean(value: Any, expected: str) -> str | None:
    options = [o.strip().strip("'") for o in str(expected).replace(" or ", ",").split(",")]
    options = [o for o in options if o]
    close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
    listed = "expected one of: " + ", ".join(options) if options else None
    if close:
        return f"did you mean `{close[0]}`? ({listed})"
    return listed


# ---------------------------------------------------------------- walking the schema by `loc`


def _walk(loc: tuple) -> tuple[Any, Any]:
    """Follow a pydantic loc through the schema; returns (annotation, field info) reached."""
    annotation: Any = Spec
    info = None
    for part in loc:
        annotation = _unwrap(annotation)
        model = _as_model(annotation)
        if model is not None:
            name = "in_" if part in ("in", "in_") else part
            field = model.model_fields.get(name)
            if field is None:
                return None, None
            annotation, info = field.annotation, field
            continue
        origin = typing.get_origin(annotation)
        if origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin in (list, tuple):
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            annotation = _member(annotation, part)
            if annotation is None:
                return None, None
        else:
            return None, None
    return annotation, info


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated, and the None of an optional `X | None` (pydantic's loc has no tag for
    it), down to the type that validates the value."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (Union, types.UnionType):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(rest) == 1:
                annotation = rest[0]
                continue
        return annotation


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _members(union: Any) -> list[Any]:
    """The models of a union, through `X | None` and Annotated unions (a kind union is optional
    in a memory's `rule:` and `retention:`)."""
    found = []
    for member in typing.get_args(union):
        member = _unwrap(member)
        if typing.get_origin(member) in (Union, types.UnionType):
            found.extend(_members(member))
        else:
            found.append(member)
    return found


def _member(union: Any, tag: Any) -> Any:
    for member in _members(union):
        model = _as_model(member)
        if model is None:
            continue
        if model.__name__ == tag:
            return model
        for disc in ("kind", "op"):
            field = model.model_fields.get(disc)
            if field is not None and tag in typing.get_args(field.annotation):
                return model
    return None


def _sibling_keys(loc: tuple) -> dict[str, str]:
    """When `loc` ends at one kind of a discriminated union: key -> kind, for the keys that
    only the union's other kinds accept."""
    if not loc:
        return {}
    union, _ = _walk(loc[:-1])
    if union is None:
        return {}
    own = set(_allowed_keys(loc))
    found: dict[str, str] = {}
    for member in _members(_unwrap(union)):
        model = _as_model(member)
        kind = model.model_fields.get("kind") if model is not None else None
        if kind is None or loc[-1] in typing.get_args(kind.annotation):
            continue
        tag = typing.get_args(kind.annotation)[0]
        for name, f in model.model_fields.items():
            found.setdefault(f.alias or name, tag)
    return {k: v for k, v in found.items() if k not in own}


def _allowed_keys(loc: tuple) -> list[str]:
    annotation, _ = _walk(loc)
    model = _as_model(_unwrap(annotation)) if annotation is not None else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _field_description(loc: tuple) -> str | None:
    _, info = _walk(loc)
    return info.description if info is not None else None
