"""Declarations as users write them: the examples of docs/language.md §3.1 compute what they
say, and mistakes are positioned errors or UserErrors that name the fix (issue 12)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

import nestdsl
from nestdsl.errors import SpecError, UserError
from nestdsl.optim import build_optimizer, read_declaration
from nestdsl.spec.shipped import read_spec

LANGUAGE = Path(__file__).parents[2] / "docs" / "language.md"


def doc_declarations() -> list[dict]:
    """The `kind: memories` yaml examples of docs/language.md, as config dicts."""
    blocks = re.findall(r"```yaml\n(.*?)```", LANGUAGE.read_text(), flags=re.S)
    found = [yaml.safe_load(b)["optimizer"] for b in blocks if b.startswith("optimizer:\n  kind: memories")]
    assert len(found) == 2
    return found


def steps_of(opt_a, opt_b, shape=(4, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    first, second = opt_a([a]), opt_b([b])
    for step in range(20):
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
        first.step()
        second.step()
    return a.detach(), b.detach()


def test_the_momentum_example_is_torch_sgd():
    config = doc_declarations()[0]
    ours, theirs = steps_of(lambda p: build_optimizer(p, config),
                            lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9))  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_the_adam_example_is_torch_adamw():
    config = doc_declarations()[1]
    # build_optimizer gives vectors no weight decay; the example's parameter is a matrix.
    ours, theirs = steps_of(lambda p: build_optimizer(p, config),
                            lambda p: torch.optim.AdamW(p, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1))  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_every_shipped_optimizer_file_is_a_shorthand_with_the_schema_defaults():
    from pydantic import TypeAdapter

    from nestdsl.spec.optimizer import SHORTHANDS, Optimizer

    adapter = TypeAdapter(Optimizer)
    assert sorted(SHORTHANDS.values()) == nestdsl.optim.shipped_optimizers()
    for kind, name in SHORTHANDS.items():
        node = adapter.validate_python({"kind": kind}).model_dump(mode="json")
        settings = read_declaration(name).settings
        assert {k: v for k, v in node.items() if k != "kind"}.items() <= settings.items(), kind
        assert set(settings) - set(node) <= {"eps"}, kind


# ---------------------------------------------------------------- mistakes


def spec_with(optimizer: str) -> str:
    text = read_spec("transformer")[0].decode()
    old = "optimizer: {kind: adamw, lr: 2.0e-3, weight_decay: 0.1}"
    assert old in text
    return text.replace(old, f"optimizer: {optimizer}")


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        ("{kind: memories, memories: {m: {structure: elementwise}}, update: {direction: [n]}}",
         "the update reads no memory named n"),
        ("{kind: memories, memories: {m: {structure: matrix}}, update: {direction: [m]}}",
         "use `keys: grad`"),
        ("{kind: memories, memories: {m: {structure: matrix, keys: grad, rule: dgd}}, update: {direction: [m]}}",
         "elementwise memories only"),
        ("{kind: memories, memories: {m: {structure: elementwise, retention: beta}}, update: {direction: [m]}}",
         "no setting named beta"),
        ("{kind: memories, memories: {m: {structure: matrix, keys: grad}}, "
         "update: {direction: [m], precondition: {memory: m}}}", "divides by an elementwise memory"),
        ("{kind: adamw, period: 0}", "period"),
        ("{kind: adamw, schedule: {kind: warmup_cosine, warmup: 5}}", "needs `total`"),
    ],
)  # fmt: skip
def test_a_wrong_declaration_in_a_spec_is_a_positioned_error(optimizer, message):
    with pytest.raises(SpecError) as err:
        nestdsl.check_text(spec_with(optimizer), "t.yaml")
    assert message in str(err.value)
    assert all(d.pos is not None and d.pos.file == "t.yaml" and d.pos.line > 1
               for d in err.value.diagnostics)  # fmt: skip


def test_a_wrong_optimizer_file_cites_its_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("nestdsl: 1\noptimizer: mine\nsettings: {lr: 0.1, weight_decay: 0}\n"
                    "memories:\n  m: {structure: elementwise, retention: 2 - x}\n"
                    "update: {direction: [m]}\n")  # fmt: skip
    with pytest.raises(SpecError) as err:
        nestdsl.optimizer(path, [torch.nn.Parameter(torch.zeros(2))])
    (diagnostic,) = err.value.diagnostics
    assert diagnostic.pos.file == str(path) and diagnostic.pos.line == 5


def test_a_users_file_trains_any_model(tmp_path):
    path = tmp_path / "nesterov-ish.yaml"
    path.write_text("nestdsl: 1\noptimizer: two-momenta\nsettings: {lr: 0.05, weight_decay: 0.0}\n"
                    "memories:\n  fast: {structure: elementwise, retention: 0.5}\n"
                    "  slow: {structure: elementwise, retention: 0.99, rule: {kind: gd, lr: 0.01}}\n"
                    "update: {direction: [fast, {memory: slow, weight: 2.0}]}\n")  # fmt: skip
    param = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = nestdsl.optimizer(str(path), [param], lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        (param**2).sum().backward()
        opt.step()
    assert float(param.detach().abs().max()) < 0.1  # it minimized the quadratic


def test_settings_and_names_are_checked():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(UserError, match=r"has no setting 'betas'; known: lr, momentum, weight_decay"):
        nestdsl.optimizer("sgd-momentum", params, betas=(0.9, 0.99))
    with pytest.raises(UserError, match=r"did you mean `adamw`"):
        nestdsl.optimizer("adamv", params)
    with pytest.raises(UserError, match=r"takes 2 betas"):
        nestdsl.optimizer("adamw", params, betas=(0.9,))
    assert isinstance(nestdsl.optimizer("delta_momentum", params), torch.optim.Optimizer)


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ("{k: quintic}", "retention: k", "is 'quintic', not a number"),
        ("{f: 2.5}", "every: f", "a whole number >= 1"),
        ("{b: [0.9]}", "retention: b", "not a number"),
        ("{b: [0.9]}", "retention: 'b[1]'", "has no item 1"),
    ],
)
def test_a_setting_of_the_wrong_type_is_refused_where_it_is_used(settings, field, message):
    optimizer = (f"{{kind: memories, settings: {settings}, memories: {{m: {{structure: elementwise, "
                 f"{field}}}}}, update: {{direction: [m]}}}}")  # fmt: skip
    with pytest.raises(SpecError, match=re.escape(message)):
        nestdsl.check_text(spec_with(optimizer), "t.yaml")
