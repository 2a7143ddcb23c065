"""Every independent error in one run: a misspelt key does not hide the checks behind it."""

from __future__ import annotations

import pytest

import nestdsl
from nestdsl.errors import SpecError


def test_unknown_keys_and_check_errors_are_reported_together():
    text = nestdsl.load("gated-deltanet").text
    broken = (text.replace("rule: {kind: gd, lr: beta}", "rule: {kind: gd, lr: beta, momentun: 0.9}")
              .replace("log_decay: g}", "log_decay: g, forgt: 0.1}")
              .replace("{op: rmsnorm, in: x}", "{op: rmsnorm, in: xx}", 1)
              .replace("memory: M, query: q,", "memory: M, query: qq,"))  # fmt: skip
    assert broken.count("\n") == text.count("\n")
    with pytest.raises(SpecError) as err:
        nestdsl.check_text(broken, "four.yaml")
    codes = sorted(d.code for d in err.value.errors)
    assert codes == ["dangling-ref", "dangling-ref", "unknown-key", "unknown-key"], codes
    lines = broken.splitlines()
    for d in err.value.errors:
        assert any(w in lines[d.pos.line - 1] for w in ("momentun", "forgt", "xx", "qq")), d


def test_a_type_error_still_stops_before_the_checks():
    """Checks on a guessed value would mislead: only unknown keys are dropped and re-checked."""
    text = nestdsl.load("gated-deltanet").text.replace("n_heads: 4", "n_heads: four")
    with pytest.raises(SpecError) as err:
        nestdsl.check_text(text.replace("{op: rmsnorm, in: x}", "{op: rmsnorm, in: xx}", 1))
    assert [d.code for d in err.value.errors] != [] and "dangling-ref" not in {
        d.code for d in err.value.errors}  # fmt: skip
