"""The generated reference (docs/reference.md) and the JSON Schema (`nestdsl schema`)."""

from __future__ import annotations

import json
import re
import typing

import pytest
from spec_helpers import REPO, shipped_spec_files

from nestdsl.cli import main
from nestdsl.commands.schema import json_schema, model_classes
from nestdsl.spec import reference
from nestdsl.spec.loader import load_yaml

DOC = REPO / "docs" / "reference.md"


def test_reference_is_up_to_date():
    fresh = reference.generate()
    current = DOC.read_text("utf-8") if DOC.is_file() else ""
    assert current == fresh, (
        "docs/reference.md is stale: run `python -m nestdsl.spec.reference` to regenerate it"
    )


def test_reference_is_deterministic():
    assert reference.generate() == reference.generate()


def _all_models() -> dict[str, type]:
    return model_classes()


def test_reference_documents_every_model_and_key():
    text = reference.generate()
    headings = set(re.findall(r"^#{2,3} (\S+)$", text, flags=re.M))
    for name, cls in _all_models().items():
        assert name in headings, f"no section for {name}"
        section = text.split(f"# {name}\n", 1)[1].split("\n#", 1)[0]
        for field_name, field in cls.model_fields.items():
            key = field.alias or field_name
            assert f"| `{key}` |" in section, f"{name}.{key} is not documented"
        doc = (cls.__doc__ or "").strip()
        if doc and doc != reference.BaseModel.__doc__.strip():
            assert doc.splitlines()[0] in section, f"{name}'s docstring is missing"


def test_reference_lists_every_kind_and_op():
    text = reference.generate()
    for cls in _all_models().values():
        for disc in ("kind", "op"):
            field = cls.model_fields.get(disc)
            if field is None:
                continue
            for tag in typing.get_args(field.annotation):
                assert f"`{tag}`" in text, f"{disc}: {tag} ({cls.__name__}) is not listed"
    for union in ("structure", "objective", "rule", "retention", "init", "reset", "optimizer"):
        assert f"## `{union}:` variants" in text
    assert "## `nodes:` variants" in text and "Chosen by `op:`." in text


def test_reference_shows_types_defaults_and_descriptions():
    text = reference.generate()
    assert "| `every` | integer > 0, `step` or `never` | required |" in text
    assert "| `heads` | size | `1` |" in text
    assert (
        "| `init` | `zeros`, `identity`, `learned` or one of the [`init:` variants](#init-variants)"
        " | `{kind: zeros}` |"
    ) in text
    assert "the level whose clock updates this memory" in text
    assert "| `in` | list of names (2 items) | required |" in text


def test_reference_links_resolve():
    text = reference.generate()
    anchors = {reference._slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"broken link #{target}"


def test_reference_command_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "ref.md"
    assert reference.main(["-o", str(out)]) == 0
    assert out.read_text("utf-8") == reference.generate()
    assert reference.main(["-o", str(out), "--check"]) == 0
    out.write_text("old\n")
    assert reference.main(["-o", str(out), "--check"]) == 1
    assert "python -m nestdsl.spec.reference" in capsys.readouterr().err


# ---------------------------------------------------------------- the JSON Schema


def test_schema_command_prints_json(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    properties = schema["properties"]
    for key in ("nestdsl", "dims", "levels", "memories", "embed", "blocks", "head"):
        assert key in properties
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) >= {"nestdsl", "levels", "embed", "blocks"}
    assert schema["$schema"].startswith("https://json-schema.org/")


def test_schema_matches_json_schema_function(capsys):
    main(["schema"])
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_schema_admits_the_kind_shorthand():
    """`objective: l2` is `{kind: l2}`; only kinds that need no other key may be bare."""
    memory = json_schema()["$defs"]["Memory"]["properties"]
    bare = memory["objective"]["anyOf"][0]
    assert bare["type"] == "string" and "l2" in bare["enum"] and "softmax" in bare["enum"]
    assert "lp" not in bare["enum"]  # `lp` needs `p`
    assert memory["init"]["anyOf"][0]["enum"] == ["zeros", "identity", "learned"]
    assert "sequence" in memory["reset"]["anyOf"][0]["enum"]
    assert "level" not in memory["reset"]["anyOf"][0]["enum"]  # needs `level:`
    assert "elu1" in memory["feature_map"]["anyOf"][0]["enum"]
    assert "structure" in memory and "anyOf" not in memory["structure"]  # no shorthand there


@pytest.mark.parametrize("path", shipped_spec_files(), ids=lambda p: p.stem)
def test_shipped_specs_validate_against_the_json_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    data = load_yaml(path.read_bytes(), str(path)).data
    jsonschema.validate(data, json_schema())
