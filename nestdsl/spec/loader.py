"""Safe YAML loading with a source map: every key and value keeps its `file:line:col`.

Only plain YAML data is accepted: no Python tags, no custom constructors, so a spec can never run
code. Hostile input is bounded: file size, nesting depth, alias expansion, duplicate keys (an error,
not last-wins), binary junk and empty documents all end as diagnostics, never as exceptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from nestdsl.errors import Diagnostic, Position, SpecError

MAX_BYTES = 1 << 20  # a spec is a page of YAML; a megabyte is already absurd
MAX_DEPTH = 64
MAX_NODES = 100_000  # bounds alias ("billion laughs") expansion

Path = tuple[Any, ...]

# YAML 1.1 reads `3e-4` as a string; researchers write learning rates that way.
_FLOAT_NO_DOT = re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `1e-3` is a float; only true/false are booleans.

    (YAML 1.1 turns a node named `on`, `no` or `y` into a boolean: a trap in a wiring graph.)
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _FLOAT_NO_DOT, list("-+0123456789")
)

_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


@dataclass
class SourceMap:
    """Positions of every value (by data path) and every mapping key (by the path it opens)."""

    file: str
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)

    def find(self, path: Path, *, key: bool = False) -> Position | None:
        """The position of `path`, or of its nearest ancestor that has one."""
        table = self.keys if key else self.values
        for n in range(len(path), -1, -1):
            pos = table.get(tuple(path[:n])) or self.values.get(tuple(path[:n]))
            if pos is not None:
                return pos
        return None


@dataclass
class LoadedYaml:
    data: Any
    source: SourceMap
    text: str


def _pos(file: str, mark: Any) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


class _Converter:
    """Turns a composed node tree into plain Python data while recording positions."""

    def __init__(self, file: str):
        self.file = file
        self.source = SourceMap(file)
        self.errors: list[Diagnostic] = []
        self.nodes = 0
        self._scalars = _Loader("")

    def convert(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            # An expanded alias carries its anchor's position; the top-level key that is
            # being expanded says better where the document blows up.
            raise _Abort(
                Diagnostic(
                    "too-large",
                    f"document expands to more than {MAX_NODES} values (alias bomb?)",
                    self.source.keys.get(path[:1]) or _pos(self.file, node.start_mark),
                    "write the values out; specs are small",
                )
            )
        if depth > MAX_DEPTH:
            raise _Abort(
                Diagnostic(
                    "too-deep",
                    f"nesting deeper than {MAX_DEPTH} levels",
                    _pos(self.file, node.start_mark),
                )
            )
        self.source.values[path] = _pos(self.file, node.start_mark)
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _COLLECTION_TAGS:
            # `!!python/object/apply:os.system [...]`, `!!set {...}`: tags on collections too
            self.errors.append(_tag_error(self.file, node))
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.errors.append(
                    Diagnostic(
                        "yaml-merge",
                        "merge keys (`<<:`) are not supported in specs",
                        _pos(self.file, key_node.start_mark),
                        "write the keys out explicitly",
                    )
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(
                    Diagnostic(
                        "bad-key",
                        "mapping keys must be plain scalars",
                        _pos(self.file, key_node.start_mark),
                    )
                )
                continue
            key = self._scalar(key_node)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                key = str(key)
            key_pos = _pos(self.file, key_node.start_mark)
            if key in out:
                first = self.source.keys.get(path + (key,))
                self.errors.append(
                    Diagnostic(
                        "duplicate-key",
                        f"key {key!r} appears twice"
                        + (f" (first at line {first.line})" if first else ""),
                        key_pos,
                        "YAML would silently keep the last one; remove one of them",
                    )
                )
                continue
            self.source.keys[path + (key,)] = key_pos
            out[key] = self.convert(value_node, path + (key,), depth + 1)
        return out

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.errors.append(_tag_error(self.file, node))
            return None
        try:
            return self._scalars.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as err:
            self.errors.append(
                Diagnostic("yaml-value", str(err), _pos(self.file, node.start_mark))
            )
            return None


def _tag_error(file: str, node: yaml.Node) -> Diagnostic:
    return Diagnostic(
        "yaml-tag",
        f"tag {node.tag!r} is not allowed in a spec",
        _pos(file, node.start_mark),
        "specs hold plain data only: strings, numbers, booleans, lists, mappings",
    )


class _Abort(Exception):
    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic


def load_yaml(text: str | bytes, file: str = "<spec>") -> LoadedYaml:
    """Parse spec text into data + source map, or raise `SpecError` with positions."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise SpecError([_too_big(file, len(text))])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            line = text.count(b"\n", 0, err.start) + 1
            col = err.start - (text.rfind(b"\n", 0, err.start) + 1) + 1
            raise SpecError(
                [
                    Diagnostic(
                        "not-text",
                        f"the file is not UTF-8 text (byte {err.start} is {text[err.start]:#04x})",
                        Position(file, line, col),
                        "is this really a YAML spec?",
                    )
                ]
            ) from None
    if len(text) > MAX_BYTES:
        raise SpecError([_too_big(file, len(text))])
    if not text.strip():
        raise SpecError(
            [Diagnostic("empty", "the spec is empty", Position(file, 1, 1), "start with `nestdsl: 1`")]
        )
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        raise SpecError([_syntax_error(file, err)]) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        col = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        char = f"U+{err.character:04X}" if isinstance(err.character, int) else repr(err.character)
        message = f"character {char} is not allowed in YAML ({err.reason})"
        raise SpecError([Diagnostic("yaml-syntax", message, Position(file, line, col))]) from None
    except yaml.YAMLError as err:
        message = str(err).splitlines()[0]
        raise SpecError([Diagnostic("yaml-syntax", message, Position(file, 1, 1))]) from None
    except RecursionError:
        raise SpecError(
            [Diagnostic("too-deep", "the document is nested too deeply", Position(file, 1, 1))]
        ) from None
    if node is None:
        raise SpecError(
            [Diagnostic("empty", "the spec is empty", Position(file, 1, 1), "start with `nestdsl: 1`")]
        )
    _check_expansion(node, file)
    converter = _Converter(file)
    try:
        data = converter.convert(node, (), 0)
    except _Abort as abort:
        raise SpecError([abort.diagnostic]) from None
    if converter.errors:
        raise SpecError(converter.errors)
    return LoadedYaml(data, converter.source, text)


def _check_expansion(root: yaml.Node, file: str) -> None:
    """Refuse an alias bomb before converting it: count values, sharing counts of aliased nodes.

    (The converter counts too, but only after building most of the expansion.)
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_DEPTH or isinstance(node, yaml.ScalarNode):
            n = 1  # too deep: the converter reports it
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        else:
            n = 1 + sum(size(item, depth + 1) for item in node.value)
        sizes[id(node)] = n = min(n, MAX_NODES + 1)
        return n

    if size(root, 0) <= MAX_NODES:
        return
    where, total = root, 1  # blame the top-level entry that crosses the limit
    entries = root.value if isinstance(root, (yaml.MappingNode, yaml.SequenceNode)) else []
    for entry in entries:
        key, value = entry if isinstance(entry, tuple) else (entry, entry)
        total += size(value, 1) + (size(key, 1) if key is not value else 0)
        if total > MAX_NODES:
            where = key
            break
    raise SpecError([Diagnostic(
        "too-large", f"document expands to more than {MAX_NODES} values (alias bomb?)",
        _pos(file, where.start_mark), "write the values out; specs are small",
    )])  # fmt: skip


def _too_big(file: str, n: int) -> Diagnostic:
    return Diagnostic(
        "too-large", f"the spec is {n} bytes; the limit is {MAX_BYTES}", Position(file, 1, 1)
    )


def _syntax_error(file: str, err: yaml.MarkedYAMLError) -> Diagnostic:
    """PyYAML's parser errors, said in the user's terms and placed where the mistake is."""
    mark = err.problem_mark or err.context_mark
    pos = _pos(file, mark) if mark else Position(file, 1, 1)
    problem = err.problem or err.context or "invalid YAML"
    context, cmark = err.context or "", err.context_mark
    opened = f"line {cmark.line + 1}" if cmark else "above"
    if "quoted scalar" in context and cmark:
        return Diagnostic("yaml-syntax", "unterminated string: this quote is never closed",
                          _pos(file, cmark), "close the string with the same quote")  # fmt: skip
    if "'\\t'" in problem:
        return Diagnostic("yaml-syntax", "a tab character cannot indent YAML", pos,
                          "indent with spaces")  # fmt: skip
    if "another document" in problem:
        return Diagnostic("yaml-syntax", "a spec is one YAML document, but a second one starts "
                          "here", pos, "remove the `---` line and what follows, or split the file")  # fmt: skip
    if context.startswith("while parsing a flow") and cmark:
        bracket = "[" if "sequence" in context else "{"
        return Diagnostic("yaml-syntax", f"{problem} (in the `{bracket}` opened at {opened}, "
                          f"column {cmark.column + 1})", pos, "is a closing bracket or a comma "
                          "missing?")  # fmt: skip
    if problem.startswith("expected <block end>"):
        return Diagnostic("yaml-syntax", "bad indentation: this line does not line up with the "
                          f"block that starts at {opened}", pos,
                          "keys of one mapping (items of one list) start in the same column")  # fmt: skip
    if context and cmark:
        problem = f"{problem} ({context} at {opened})"
    return Diagnostic("yaml-syntax", problem, pos)
