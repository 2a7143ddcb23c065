"""The front of the pipeline: text -> safe YAML -> schema -> level graph -> checks.

`check_text` is the whole of `nestdsl validate` for one spec: it returns a `CheckedSpec` or raises
one `SpecError` holding every diagnostic, each at its `file:line:col`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import ValidationError

from nestdsl.checks import CHECKS, CheckContext
from nestdsl.errors import Diagnostic, Position, SpecError
from nestdsl.graph.build import build_graph, outer_level
from nestdsl.spec.errors_map import diagnostics_from
from nestdsl.spec.loader import SourceMap, load_yaml
from nestdsl.spec.schema import Spec
from nestdsl.spec.shipped import read_spec


@dataclass
class CheckedSpec:
    """A spec that passed every check, with what later stages need."""

    spec: Spec
    source: SourceMap
    graph: nx.MultiDiGraph
    shapes: dict[tuple[str, str], tuple[int, ...]]
    text: str
    file: str
    warnings: list[Diagnostic] = field(default_factory=list)
    plan: Any = None  # the compiler's plan after every pass (nestdsl.compiler.Plan)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source_text(self) -> str:
        return self.text

    def outer_level(self) -> str:
        """The level that trains the embedding, the head and what names no level."""
        return outer_level(self.spec)


def load(name_or_path: str | Path, overrides: list[str] | None = None) -> CheckedSpec:
    """Read a shipped spec by name or a spec file by path, apply `--set` overrides, check it."""
    raw, file = read_spec(name_or_path)
    return check_text(raw, file, overrides or [])


def check_text(text: str | bytes, file: str = "<spec>", overrides: list[str] = ()) -> CheckedSpec:
    loaded = load_yaml(text, file)
    data, source = loaded.data, loaded.source
    if overrides:
        data = _apply_overrides(data, source, overrides)
    if not isinstance(data, dict):
        raise SpecError([Diagnostic("not-a-mapping", "a spec is a mapping of keys",
                                    Position(file, 1, 1), "start with `nestdsl: 1`")])  # fmt: skip
    version = data.get("nestdsl")
    if version is not None and (type(version) is not int or version != 1):  # `true` == 1 too
        raise SpecError([Diagnostic("version", f"spec version {json.dumps(version, default=str)} is not supported",
                                    source.find(("nestdsl",)), "this nestdsl reads `nestdsl: 1`")])  # fmt: skip
    spec, found, dropped = _schema(data, source)
    if spec is None:
        raise SpecError(_dedupe(found))
    graph = build_graph(spec, source)
    ctx = CheckContext(spec, source, graph)
    for name, check in CHECKS.items():
        try:
            found.extend(check(ctx))
        except Exception as err:  # a bug in a check must still end as a report, not a crash
            found.append(Diagnostic("internal", f"check `{name}` failed: {err!r}; this is a bug "
                                    "in nestdsl, please report it", Position(file, 1, 1)))  # fmt: skip
    # A dropped misspelt key is reported once: not again as the key its mapping now lacks.
    parents = {source.find(loc[:-1], key=True) for loc in dropped}
    found = [d for d in found if not (d.code == "missing-key" and d.pos in parents)]
    found = _dedupe(found)
    if any(d.severity == "error" for d in found):
        # Warnings about unused parts mostly echo the errors (a dangling name orphans its
        # inputs); show them once the errors are fixed.
        raise SpecError([d for d in found if d.severity == "error"])
    checked = CheckedSpec(spec, source, graph, ctx.shapes, loaded.text, file, found)
    # What validates compiles: every compiler pass runs here, short of building modules.
    from nestdsl.compiler import run_passes

    try:
        checked.plan = run_passes(checked)
    except SpecError as err:
        raise SpecError(_dedupe(err.diagnostics)) from None
    return checked


def _schema(data: Any, source: SourceMap) -> tuple[Spec | None, list[Diagnostic], list[tuple]]:
    """The spec and the schema's diagnostics. Unknown keys mean nothing, so they are dropped
    and the rest validated again: one run reports a misspelt key and the mistakes the later
    checks find behind it. Any other schema error stops before the checks (their findings
    would rest on a guess)."""
    found: list[Diagnostic] = []
    dropped: list[tuple] = []  # data paths of the dropped keys
    for _ in range(8):  # each round drops every unknown key pydantic reported
        try:
            return Spec.model_validate(data), found, dropped
        except ValidationError as err:
            found += diagnostics_from(err, data, source)
            errors = err.errors()
            if any(e["type"] != "extra_forbidden" for e in errors):
                return None, found, dropped
            data = copy.deepcopy(data)
            dropped += [_drop(data, e["loc"]) for e in errors]
    return None, found, dropped


def _drop(data: Any, loc: tuple) -> tuple:
    """Delete the key at a pydantic `loc`, skipping the parts that are union tags; returns
    the key's path in the data."""
    node, path = data, []
    for part in loc[:-1]:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(
                part, int) and part < len(node):  # fmt: skip
            node = node[part]
            path.append(part)
    if isinstance(node, dict):
        node.pop(loc[-1], None)
    return (*path, loc[-1])


def _dedupe(found: list[Diagnostic]) -> list[Diagnostic]:
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda d: (d.severity != "error", d.pos.line if d.pos else 0,
                                         d.pos.col if d.pos else 0))  # fmt: skip


def _apply_overrides(data: Any, source: SourceMap, overrides: list[str]) -> Any:
    """`dims.d_model=128` sets one value and `KEY=null` removes a key (its field takes its
    default); diagnostics cite the `--set` flag."""
    data = copy.deepcopy(data)
    errors = []
    for i, item in enumerate(overrides):
        pos = Position("--set", i + 1, 1)
        key, sep, raw = item.partition("=")
        parts = [int(p) if p.isascii() and p.isdigit() else p for p in key.strip().split(".")]
        if not sep or not key.strip() or any(p == "" for p in parts):
            errors.append(Diagnostic("bad-override", f"`{item}` is not KEY=VALUE",
                                     pos, "e.g. --set dims.d_model=128"))  # fmt: skip
            continue
        try:
            value = load_yaml(raw or "''", "--set").data if raw.strip() else ""
        except SpecError:
            value = raw
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else (
                node[part] if isinstance(node, list) and isinstance(part, int)
                and part < len(node) else None)  # fmt: skip
            if not isinstance(child, (dict, list)):
                where = ".".join(map(str, parts[: depth + 1]))
                what = "is not in the spec" if child is None else "is not a mapping in the spec"
                errors.append(Diagnostic("bad-override", f"`{where}` {what}",
                                         pos, "overrides set values that exist in the spec"))  # fmt: skip
                node = None
                break
            node = child
        if node is None:
            continue
        last = parts[-1]
        if not isinstance(node, (dict, list)):
            errors.append(Diagnostic("bad-override", "the spec is not a mapping", pos))
            continue
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                errors.append(Diagnostic("bad-override", f"no item {last} in `{key}`", pos))
                continue
        if value is None and isinstance(node, dict):
            node.pop(last, None)  # `KEY=null` removes the key: the field takes its default
        else:
            node[last] = value
        # The new value and all it holds come from the flag, not from the file.
        for table in (source.values, source.keys):
            for stale in [p for p in table if p[: len(parts)] == tuple(parts)]:
                del table[stale]
        source.values[tuple(parts)] = pos
        source.keys[tuple(parts)] = pos
    if errors:
        raise SpecError(errors)
    return data
