"""Unknown keys get the nearest allowed key and the list of allowed keys in every section of the
schema, each kind of a discriminated union included (issue 14, item 3)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

import nestdsl
from nestdsl.errors import SpecError
from nestdsl.spec.errors_map import _allowed_keys, _members, _unwrap
from nestdsl.spec.schema import Spec

ROOT = Path(__file__).resolve().parents[2]
GATED = (ROOT / "specs" / "gated-deltanet.yaml").read_text()


def _error(old: str, new: str) -> str:
    assert old in GATED
    with pytest.raises(SpecError) as caught:
        nestdsl.check_text(GATED.replace(old, new), "t.yaml")
    # Other checks may also report what the misspelt key leaves out; the hint is on this one.
    (unknown,) = [d for d in caught.value.errors if d.code == "unknown-key"]
    return str(unknown)


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("log_decay: g}", "log_decy: g}", "did you mean `log_decay`? allowed keys here: kind, mode, forget, log_decay"),
        ("mode: local,", "mode: local, forgt: 1,", "did you mean `forget`? allowed keys here: kind, mode, forget, log_decay"),
        ("lr: beta}", "lr: beta, momentun: 0.9}", "did you mean `momentum`? it belongs to `kind: momentum`, not `gd`; allowed keys here: kind, lr"),
        ("heads: n_heads,", "hedas: n_heads,", "did you mean `heads`?"),
    ],
    ids=["retention-log_decy", "retention-forgt", "rule-momentun", "structure-hedas"],
)  # fmt: skip
def test_typos_inside_kinds_get_hints(old, new, expected):
    message = _error(old, new)
    assert "error[unknown-key]" in message and expected in message


def _sections():
    """(loc, model) for every model reachable from Spec: dict keys `X`, list items 0, union
    members by their tag (or class name, untagged), as pydantic writes an error's loc."""
    found, seen = [], set()

    def visit(annotation, loc):
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            seen.add(annotation)
            found.append((loc, annotation))
            for name, field in annotation.model_fields.items():
                visit(field.annotation, loc + (field.alias or name,))
        elif origin is dict:
            visit(typing.get_args(annotation)[1], loc + ("X",))
        elif origin in (list, tuple):
            visit(typing.get_args(annotation)[0], loc + (0,))
        elif origin is not None and _members(annotation):
            for member in _members(annotation):
                model = member if isinstance(member, type) and issubclass(member, BaseModel) else None
                tag = model.__name__ if model else None  # an untagged union: the class name
                for disc in ("kind", "op"):
                    field = model.model_fields.get(disc) if model else None
                    if field is not None:
                        tag = typing.get_args(field.annotation)[0]
                visit(member, loc + ((tag,) if tag is not None else ()))

    visit(Spec, ())
    return found


SECTIONS = _sections()


def test_the_walk_reaches_many_sections():
    names = {model.__name__ for _, model in SECTIONS}
    assert {"GDRule", "MomentumRule", "L2Retention", "KLRetention", "AdamW", "M3"} <= names
    assert len(SECTIONS) > 30


@pytest.mark.parametrize("loc,model", SECTIONS, ids=[m.__name__ for _, m in SECTIONS])
def test_every_section_lists_its_keys(loc, model):
    keys = _allowed_keys(loc)
    assert keys == [f.alias or n for n, f in model.model_fields.items()], loc
