"""What every check sees: the schema object, positions, the graph, and resolved sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from nestdsl.errors import Diagnostic, Position
from nestdsl.graph.build import block_name
from nestdsl.spec.loader import SourceMap
from nestdsl.spec.schema import Spec


@dataclass
class CheckContext:
    spec: Spec
    source: SourceMap
    graph: nx.MultiDiGraph
    # Filled by the shapes check: per (block, tensor) its feature shape (without batch, time).
    shapes: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)

    def at(self, *path, key: bool = False) -> Position | None:
        return self.source.find(tuple(path), key=key)

    def error(self, code: str, message: str, path: tuple, hint: str | None = None,
              key: bool = False) -> Diagnostic:  # fmt: skip
        return Diagnostic(code, message, self.source.find(path, key=key), hint)

    def warning(self, code: str, message: str, path: tuple, hint: str | None = None) -> Diagnostic:
        return Diagnostic(code, message, self.source.find(path, key=True), hint, "warning")

    def blocks(self):
        """(index, name, block) for every declared block."""
        return [(i, block_name(self.spec, i), b) for i, b in enumerate(self.spec.blocks)]

    def period(self, level: str) -> int | str | None:
        lv = self.spec.levels.get(level)
        return lv.every if lv else None
