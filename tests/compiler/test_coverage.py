"""Every construct of the spec language is lowered or rejected, never ignored (issue 8).

The test walks the pydantic schema from `Spec` (fields of every model reachable through
discriminated unions, lists, dicts and Optionals, and every value of every Literal) and asks
the table in `coverage_cases.py` for a case per item: a small spec with and without the
construct, and what must happen (the compiled model differs in its forward pass, its initial
parameters, or after a few outer-optimizer steps; or `validate` rejects it at a position).
A new schema field without a case fails `test_every_schema_item_has_a_case`, naming it.
A second grid puts each memory construct on each kind of memory (matrix on a chunk, MLP per
token, gated MLP, one-layer MLP, cache, task-loss CMS): lowered, or rejected at a position.
Definitions nothing uses (a dim, a level, a block node) must at least draw a warning.

DESIGN.md, "Semantics that must be exact": "A construct is lowered or rejected with a position,
never ignored."
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal, get_args, get_origin

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel

import nestdsl
from nestdsl.optim import build_level_optimizers, build_optimizer, optimizer_settings
from nestdsl.spec.common import Learned
from nestdsl.spec.schema import Spec
from tests.compiler.coverage_cases import BASES, CASES, GRID, Case

# Fields that document or name things and change no computation, with the reason.
EXEMPT = {
    "Spec.name": "the spec's name: run folders, `show`, checkpoints' identity",
    "Spec.description": "documentation",
    "Level.description": "documentation",
    "Memory.description": "documentation",
    "Block.name": "labels the block's layers in `show` and `viz`",
}
# Containers: what they hold is covered item by item (their kinds, fields and values).
CONTAINERS = {
    "Spec.levels": "every Level field",
    "Spec.memories": "every Memory field",
    "Spec.embed": "Embed.vocab, Embed.dim",
    "Spec.blocks": "every Block field",
    "Spec.head": "Head.norm, Head.tied",
    "Block.nodes": "every op's fields",
    "Level.optimizer": "AdamW / M3 / DeltaMomentum, each field",
    "Memory.structure": "each structure kind and field",
    "Memory.objective": "each objective kind and field",
    "Memory.init": "each init kind and field",
    "Memory.reset": "each reset kind and field",
}
# Constructs that validate but change nothing. Each entry FAILS its case on purpose (so CI
# shows it) until the construct gets a consumer or a rejection; then delete the entry.
KNOWN_IGNORED: dict[str, str] = {}  # item -> what was observed; none left

B, T = 2, 40  # T crosses the chunk boundaries of the bases' 8- and 16-token levels
STEPS = 3  # outer steps for `trains`: Adam's first step is sign(g) whatever its betas


# ---------------------------------------------------------------- the schema walk


def _leaves(annotation):
    """The models, Literals and plain types (int, str, ...) inside an annotation, through
    unions, lists, dicts and Annotated; `None` of an Optional is no leaf."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _leaves(get_args(annotation)[0])
    elif origin is Literal:
        yield annotation
    elif annotation is type(None):
        return
    elif isinstance(annotation, type) and origin is None:
        yield annotation
    else:
        for arg in get_args(annotation):
            yield from _leaves(arg)


def schema_items(root: type[BaseModel] = Spec) -> list[str]:
    """`Model.field` for every field, `Model.field=value` for every value of a many-valued
    Literal (a field that is only such a Literal is covered by its values alone), and
    `Model.field:learned` for every step size or gate that may be `{kind: learned}`."""
    items: list[str] = []
    seen: set[type] = set()
    todo = [root]
    while todo:
        model = todo.pop(0)
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            leaves = list(_leaves(info.annotation))
            literals = [leaf for leaf in leaves if get_origin(leaf) is Literal]
            values = [v for lit in literals for v in get_args(lit)]
            todo += [
                leaf for leaf in leaves if isinstance(leaf, type) and issubclass(leaf, BaseModel)
            ]
            only_values = len(values) > 1 and len(literals) == len(leaves)
            if not only_values:
                items.append(f"{model.__name__}.{name}")
            if len(values) > 1:
                items += [f"{model.__name__}.{name}={v}" for v in values]
            if Learned in leaves and model is not Learned:
                items.append(f"{model.__name__}.{name}:learned")
    return items


ITEMS = schema_items()
CHECKED = [i for i in ITEMS if i not in EXEMPT and i not in CONTAINERS]


def test_every_schema_item_has_a_case():
    missing = [i for i in CHECKED if i not in CASES]
    assert not missing, f"schema items without a coverage case (coverage_cases.py): {missing}"


def test_no_case_or_exemption_is_stale():
    """A case for an item the schema no longer has would hide a rename."""
    stale = sorted(set(CASES) - set(ITEMS)) + sorted((set(EXEMPT) | set(CONTAINERS)) - set(ITEMS))
    assert not stale, f"cases or exemptions for items not in the schema: {stale}"
    assert not set(KNOWN_IGNORED) - set(CASES) - set(GRID) - set(UNUSED)


def test_the_walk_reaches_every_part_of_the_language():
    for item in (
        "Spec.dims",
        "Level.every=never",
        "M3.ns_kind=cubic",
        "LevelReset.level",
        "Unary.op=neg",
        "Linear.then=mamba_decay",
        "Learned.per=scalar",
        "BiasInit.init",
    ):
        assert item in ITEMS, item


# ---------------------------------------------------------------- building and comparing


@functools.cache
def _checked(base: str, overrides: tuple[str, ...]):
    return nestdsl.check_text(BASES[base], f"<{base}>", list(overrides))


@functools.cache
def _reference(base: str, before: tuple[str, ...]):
    """A compiled reference model (float64, seed 0) and its outputs, cached across cases."""
    model = _build(_checked(base, before))
    with torch.no_grad():
        logits, state = model(_tokens())
    return model, logits, state


@functools.cache
def _trained_reference(base: str, before: tuple[str, ...]) -> torch.Tensor:
    """The reference's logits after STEPS outer steps (the reference itself stays untouched)."""
    model = _build(_checked(base, before))
    _load_matching(model, _reference(base, before)[0])
    return _train(model, _checked(base, before))


def _build(checked):
    torch.manual_seed(0)
    return nestdsl.compile(checked).double()


@functools.cache
def _tokens() -> torch.Tensor:
    return torch.randint(0, 32, (B, T), generator=torch.Generator().manual_seed(1))


def _load_matching(model: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy `source`'s tensors into `model` wherever names and shapes match."""
    mine = model.state_dict()
    same = {k: v for k, v in source.state_dict().items() if k in mine and mine[k].shape == v.shape}
    model.load_state_dict(same, strict=False)


def _differences(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ between two name -> tensor maps. A tensor on one side
    only counts unless it is all zeros (an unused momentum is no behaviour)."""
    only = [(n, t) for m, o in ((a, b), (b, a)) for n, t in m.items() if n not in o]
    out = sorted(n for n, t in only if t.is_floating_point() and bool(t.abs().max() > 0)
                 or not t.is_floating_point() and bool((t != 0).any()))  # fmt: skip
    for name in set(a) & set(b):
        x, y = a[name], b[name]
        if x.shape != y.shape or not torch.allclose(x.double(), y.double(), rtol=1e-9, atol=1e-12):
            out.append(name)
    return out


def _train(model: torch.nn.Module, checked) -> torch.Tensor:
    """STEPS outer steps on fixed tokens with the spec's optimizers; the logits after them."""
    configs = {
        name: optimizer_settings(level.optimizer.model_dump(mode="json"))
        for name, level in checked.spec.levels.items()
        if level.every == "step" and level.optimizer is not None
    }
    optimizers = build_level_optimizers(model, configs, build_optimizer)
    tokens = _tokens()
    for _ in range(STEPS):
        optimizers.zero_grad()
        logits, _ = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizers.step()
    with torch.no_grad():
        return model(tokens)[0]


def observe(case: Case) -> str:
    """Run a case; a sentence saying what was seen (empty when nothing changed)."""
    before = case.before
    variant_overrides = (*before, *case.variant)
    if case.outcome == "rejected":
        try:
            _checked(case.other or case.base, variant_overrides)
        except nestdsl.SpecError as err:
            unpositioned = [d for d in err.diagnostics if d.pos is None or d.pos.line < 1]
            assert not unpositioned, f"diagnostics without a position: {unpositioned}"
            codes = [d.code for d in err.diagnostics]
            # A typo in the case (an override of a missing key) must not pass as a rejection.
            assert case.code in codes, f"rejected, but with {codes}, not `{case.code}`: {err}"
            return f"rejected: {case.code}"
        return ""
    checked = _checked(case.other or case.base, variant_overrides)
    if case.outcome == "init":
        reference = _build(_checked(case.base, before))
        changed = _differences(reference.state_dict(), _build(checked).state_dict())
        return f"initial parameters differ: {changed}" if changed else ""
    reference, ref_logits, ref_state = _reference(case.base, before)
    model = _build(checked)
    _load_matching(model, reference)
    if case.outcome == "trains":
        trained = _trained_reference(case.base, before)
        changed = _differences({"logits": trained}, {"logits": _train(model, checked)})
        return "logits differ after training" if changed else ""
    with torch.no_grad():
        logits, state = model(_tokens())
    changed = _differences({"logits": ref_logits, **ref_state}, {"logits": logits, **state})
    if case.outcome == "learned":
        # A learned value computes what its initial constant does, until the outer level trains it.
        assert not changed, f"a learned value differs from its initial constant in {changed}"
        trained = _trained_reference(case.base, before)
        moved = _differences({"logits": trained}, {"logits": _train(model, checked)})
        return "the learned value trains" if moved else ""
    if case.outcome == "carries":  # a reset policy shows in what the next sequence starts from
        changed = _differences(reference.carried_over(ref_state), model.carried_over(state))
        return f"the next sequence starts from {changed}" if changed else ""
    assert case.outcome == "differs", case.outcome
    return f"differs in {changed}" if changed else ""


@pytest.mark.parametrize("item", CHECKED)
def test_construct_has_a_consumer(item):
    if item not in CASES:
        pytest.fail(f"no coverage case for {item} (see test_every_schema_item_has_a_case)")
    case = CASES[item]
    try:
        seen = observe(case)
    except nestdsl.SpecError as err:
        if item not in KNOWN_IGNORED:
            raise
        seen = f"rejected: {[d.code for d in err.diagnostics]}; make its case `rejected`"
    if item in KNOWN_IGNORED:
        if seen:
            pytest.fail(f"{item} now has a consumer ({seen}): delete it from KNOWN_IGNORED")
        pytest.fail(f"known ignored construct {item}: {KNOWN_IGNORED[item]}")
    assert seen, f"{item}: validates, but the model is the same with and without it ({case})"


@pytest.mark.parametrize("pair", list(GRID))
def test_memory_construct_on_each_kind_of_memory(pair):
    """`never ignored` across memory kinds: the model changes, or validate rejects it."""
    case = GRID[pair]
    _checked(case.base, case.before)  # the setup itself validates: its constructs are real
    try:
        _checked(case.base, (*case.before, *case.variant))
    except nestdsl.SpecError as err:
        assert all(d.pos is not None and d.pos.line >= 1 for d in err.diagnostics), err
        seen = f"rejected: {[d.code for d in err.diagnostics]}"
    else:
        seen = observe(case)
    if pair in KNOWN_IGNORED:
        if seen:
            pytest.fail(f"{pair} now has a consumer ({seen}): delete it from KNOWN_IGNORED")
        pytest.fail(f"known ignored construct {pair}: {KNOWN_IGNORED[pair]}")
    assert seen, f"{pair}: validates, but the model is the same with and without it ({case})"


# A definition nothing uses changes nothing either: validate says so (a warning, at its line).
UNUSED = {
    "unused:dims": "dims.unused=5",
    "unused:levels": "levels.spare={every: 4}",
    "unused:nodes": "blocks.0.nodes.zz={op: silu, in: y}",
}


@pytest.mark.parametrize("item", list(UNUSED))
def test_an_unused_definition_is_reported(item):
    name = UNUSED[item].split("=")[0].split(".")[-1]
    warnings = _checked("matrix", (UNUSED[item],)).warnings
    named = [w for w in warnings if f"`{name}`" in w.message and w.pos is not None]
    if item in KNOWN_IGNORED:
        if named:
            pytest.fail(f"{item} is now reported ({named[0].code}): delete it from KNOWN_IGNORED")
        pytest.fail(f"known ignored construct {item}: {KNOWN_IGNORED[item]}")
    assert named, f"{item}: validate says nothing about the unused `{name}`: {warnings}"
