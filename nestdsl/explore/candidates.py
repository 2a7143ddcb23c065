"""Candidates of a search: a mutated spec document checked by the full validate path, and a
fingerprint of its lowered IR up to names, so two spellings of one model are trained once.

`check_candidate` renders the document as YAML and runs `nestdsl.check_text` on it: schema,
checks and every compiler pass (what validates compiles). A rejected candidate is dropped with
its reason, the code of its first diagnostic (`level-order`, `lower-unsupported`, ...), so the
search can say which operators tend to leave the space of specs.

`fingerprint(plan)` hashes what the compiler decided (layer step order, each op with its
output shape, each memory's lowered options, clock, chunk, resets and kernel, the outer
optimizers), with every user-chosen name replaced by its order of first appearance in the
plan's step order: renaming a node, a memory or a level does not change it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field

from nestdsl.errors import SpecError, UserError
from nestdsl.explore.spec_doc import dump


@dataclass
class Checked:
    """The verdict on one candidate document."""

    text: str  # the YAML that was checked
    checked: object | None = None  # the CheckedSpec when valid
    reason: str | None = None  # why it was rejected
    detail: str = ""  # the first diagnostic, in full

    @property
    def valid(self) -> bool:
        return self.checked is not None


@dataclass
class Rejections:
    """Why candidates were dropped, counted by reason (and which operators produced them)."""

    reasons: Counter = field(default_factory=Counter)
    by_operator: Counter = field(default_factory=Counter)
    duplicates: int = 0
    not_applicable: Counter = field(default_factory=Counter)

    def add(self, reason: str, operators: list[str]) -> None:
        self.reasons[reason] += 1
        for op in operators:
            self.by_operator[op] += 1

    def as_dict(self) -> dict:
        return {"invalid": dict(sorted(self.reasons.items())),
                "invalid_by_operator": dict(sorted(self.by_operator.items())),
                "duplicates": self.duplicates,
                "not_applicable": dict(sorted(self.not_applicable.items()))}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Rejections:
        return cls(Counter(data.get("invalid", {})), Counter(data.get("invalid_by_operator", {})),
                   data.get("duplicates", 0), Counter(data.get("not_applicable", {})))  # fmt: skip


def check_candidate(doc: dict, file: str = "<candidate>", header: str = "") -> Checked:
    """The document through the whole front end; never raises for a bad candidate."""
    import nestdsl

    text = dump(doc, header)
    try:
        return Checked(text, checked=nestdsl.check_text(text, file))
    except SpecError as err:
        first = err.diagnostics[0] if err.diagnostics else None
        code = first.code if first else "spec-error"
        return Checked(text, reason=code, detail=str(first) if first else str(err))
    except UserError as err:
        return Checked(text, reason="user-error", detail=str(err))
    except Exception as err:  # noqa: BLE001 - a crash in a pass is a bug to report, not a stop
        return Checked(text, reason=f"internal:{type(err).__name__}", detail=repr(err)[:300])


# ---------------------------------------------------------------- the fingerprint


def fingerprint(plan) -> str:
    """A short hash of the plan's decisions, independent of the names the spec chose."""
    names: dict[str, str] = {}

    def name(n: str) -> str:
        return names.setdefault(n, f"#{len(names)}")

    for layer in plan.layers:
        name(layer.block.input)
        for _, step in layer.steps:
            for part in _parts(step):
                name(part)
        for memory in layer.memories.values():
            name(memory.decl)
            name(memory.level)
    for level in plan.spec.levels:
        name(level)

    def rename(value):
        if isinstance(value, dict):
            return {rename(k): rename(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [rename(v) for v in value]
        if isinstance(value, str):
            if value in names:
                return names[value]
            return re.sub(r"`([A-Za-z_]\w*)`", lambda m: names.get(m.group(1), m.group(0)), value)
        return value

    layers = []
    for layer in plan.layers:
        ops = []
        for kind, step in layer.steps:
            if kind in ("memory", "group"):
                ops.append([kind, [name(part) for part in _parts(step)]])
                continue
            for part in _parts(step):  # one node, or a group's joined feedback reads
                node = layer.block.nodes[part].model_dump(mode="json", by_alias=True)
                ops.append([kind, name(part), rename(node), list(layer.shapes.get(part, ()))])
        mems = {}
        for memory in layer.memories.values():
            mems[name(memory.decl)] = rename({
                "every": memory.every, "chunk": memory.chunk, "reset_every": memory.reset_every,
                "writes": list(memory.writes), "reads": list(memory.reads),
                "feedback": list(memory.feedback), "kernel": memory.kernel,
                "options": dataclasses.asdict(memory.options) if memory.options else None,
            })  # fmt: skip
        layers.append({"level": name(layer.level), "segment": layer.segment, "ops": ops,
                       "memories": dict(sorted(mems.items())), "out": name(layer.block.out)})  # fmt: skip
    spec = plan.spec
    optimizers = {name(n): lv.optimizer.model_dump(mode="json") if lv.optimizer else None
                  for n, lv in spec.levels.items() if not isinstance(lv.every, int)}  # fmt: skip
    whole = {
        "vocab": plan.vocab, "d_model": plan.d_model, "outer": name(plan.outer or ""),
        "task_window": plan.task_window, "layers": layers,
        "optimizers": dict(sorted(optimizers.items())),
        "embed": spec.embed.model_dump(mode="json"), "head": spec.head.model_dump(mode="json"),
    }  # fmt: skip
    blob = json.dumps(whole, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _parts(step: str) -> list[str]:
    """The names in a layer step: one node or memory, or a memory group's members and joined
    feedback reads (`group_memories` names those steps `a+b+...`)."""
    return step.split("+")
