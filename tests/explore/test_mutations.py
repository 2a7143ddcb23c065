"""The mutation operators of `nestdsl explore` on every shipped spec.

Property: a random chain of operators on any shipped spec either gives a spec that passes the
full validate path or is a counted rejection with a diagnostic code; no operator raises
anything but NotApplicable, and no candidate check crashes a compiler pass. Beside it, each
operator is checked to apply and validate on a spec it is meant for, and the fingerprint is
checked to ignore names and see real changes.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestdsl.explore.candidates import check_candidate, fingerprint
from nestdsl.explore.mutations import OPERATORS, mutate
from nestdsl.explore.spec_doc import NotApplicable
from nestdsl.spec.loader import load_yaml
from nestdsl.spec.shipped import read_spec, shipped_names

SPECS = shipped_names()
DOCS = {name: load_yaml(*read_spec(name)).data for name in SPECS}

PROFILE = settings(
    max_examples=60, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


@PROFILE
@given(spec=st.sampled_from(SPECS), seed=st.integers(0, 2**31), steps=st.integers(1, 3))
def test_random_chains_give_valid_specs_or_counted_rejections(spec, seed, steps):
    doc, done, skipped = mutate(DOCS[spec], random.Random(seed), steps)
    assert len(done) <= steps
    assert all(line.split(":")[0] in OPERATORS for line in done), done
    assert set(skipped) <= set(OPERATORS)
    verdict = check_candidate(doc)
    if verdict.valid:
        assert verdict.checked.plan is not None and "compile" not in verdict.checked.plan.done
    else:
        assert verdict.reason and not verdict.reason.startswith("internal"), verdict.detail


# One spec each operator is meant for, where it must apply and (with some seed) validate.
MEANT_FOR = {
    "add_level": "hope",
    "remove_level": "hope",
    "change_period": "titans-lmm",
    "move_memory": "hope",
    "swap_structure": "gated-deltanet",
    "swap_objective": "gated-deltanet",
    "swap_rule": "titans-lmm",
    "swap_retention": "titans-lmm",
    "make_adaptive": "gated-deltanet",
    "insert_cms": "titans-lmm",
    "remove_cms": "hope",
    "change_chunk": "titans-lmm",
    "nest_levels": "hope",
    "unnest_levels": None,  # needs a nested spec: made by nest_levels below
}


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_each_operator_applies_and_validates_where_meant(op):
    doc = DOCS[MEANT_FOR[op] or "hope"]
    if op == "unnest_levels":
        doc, _, _ = mutate(doc, random.Random(1), 1, ["nest_levels"])
    before = fingerprint(check_candidate(doc).checked.plan)
    valid = 0
    for seed in range(4):
        new, done, _ = mutate(doc, random.Random(seed), 1, [op])
        assert done and done[0].startswith(op + ":"), done
        verdict = check_candidate(new)
        if verdict.valid:
            valid += 1
            assert fingerprint(verdict.checked.plan) != before, done
    assert valid >= 1, f"{op} never validated on {MEANT_FOR[op]}"


def test_an_operator_with_nothing_to_act_on_says_so():
    with pytest.raises(NotApplicable):  # gated-deltanet has one level in context
        OPERATORS["remove_level"](DOCS["gated-deltanet"], random.Random(0))
    doc, done, skipped = mutate(DOCS["gated-deltanet"], random.Random(0), 1, ["remove_cms"])
    assert done == [] and skipped == ["remove_cms"] * 4 and doc == DOCS["gated-deltanet"]


def test_the_fingerprint_ignores_names_and_sees_values():
    text = read_spec("gated-deltanet")[0].decode()
    renamed = (text.replace("M:", "Mem:").replace("memory: M,", "memory: Mem,")
               .replace("token", "tick").replace("beta", "b_t"))  # fmt: skip
    a = check_candidate(load_yaml(text).data).checked.plan
    b = check_candidate(load_yaml(renamed).data).checked.plan
    assert set(b.spec.memories) == {"Mem"} and "tick" in b.spec.levels
    assert fingerprint(a) == fingerprint(b)
    changed = check_candidate(load_yaml(text.replace("every: 1}", "every: 2}")).data).checked.plan
    assert fingerprint(changed) != fingerprint(a)


def test_chains_are_deterministic_for_a_seed():
    one = mutate(DOCS["hope"], random.Random("s/3"), 3)
    two = mutate(DOCS["hope"], random.Random("s/3"), 3)
    assert one == two
