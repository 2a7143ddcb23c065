"""The command-line surface is frozen: changing a command or flag must change this test too.

Every help screen shows an example."""

from __future__ import annotations

import argparse

import pytest

from nestdsl.cli import build_parser

SURFACE = {
    "validate": (["specs"], ["--set"]),
    "show": (["spec"], ["--after", "--set"]),
    "schema": ([], ["--output", "-o"]),
    "train": (["spec"], ["--batch-size", "--carry-state", "--ckpt-every", "--data", "--device",
                         "--eval-every", "--grad-clip", "--init-from", "--init-map",
                         "--keep-checkpoints", "--log", "--lr",
                         "--no-progress", "--out", "--recompute", "--resume", "--seed", "--seq-len", "--set",
                         "--steps", "--tokenizer", "--warmup"]),  # fmt: skip
    "generate": (["run_dir"], ["--device", "--prompt", "--repetition-penalty", "--seed",
                               "--temperature", "--tokens", "--top-k", "--top-p"]),  # fmt: skip
    "list": ([], []),
    "eval": (["subject"], ["--batch-size", "--d-model", "--data", "--depths", "--device",
                           "--domains", "--eval-rows", "--grad-clip", "--grid", "--heads", "--kinds",
                           "--layers", "--length", "--lengths", "--lr", "--max-bytes",
                           "--no-progress", "--out", "--piece", "--seed", "--seq-len", "--set",
                           "--steps", "--steps-per-stage", "--streams", "--task", "--train-length",
                           "--vocab", "--weight-decay", "--work-dir"]),  # fmt: skip
    "compare": (["specs"], ["--batch-size", "--budget", "--data", "--device", "--eval-batches",
                            "--eval-every", "--match-params", "--no-progress", "--out",
                            "--param-tolerance", "--params", "--resume", "--seeds", "--seq-len",
                            "--set", "--task-set", "--tasks"]),  # fmt: skip
    "explore": (["bases"], ["--batch-size", "--budget", "--data", "--max-candidate-time",
                            "--no-pictures", "--objective", "--out", "--resume", "--seed",
                            "--seq-len", "--steps", "--strategy", "--tolerance"]),  # fmt: skip
    "viz": (["spec"], ["--expand", "--no-legend", "--output", "--set", "--timeline", "--tokens", "-o"]),
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_surface_is_frozen():
    found = {}
    for name, sub in subcommands().items():
        options = sorted(o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help"))
        positionals = [a.dest for a in sub._actions if not a.option_strings]
        found[name] = (positionals, options)
    assert found == SURFACE


# The Python API: `import nestdsl` exports exactly these (tests/cli/test_surface.py freezes them).
PUBLIC_API = ["CheckedSpec", "Diagnostic", "Position", "SpecError", "UserError", "check_text",
              "compile", "load", "load_run", "optimizer", "shipped_names"]  # fmt: skip


def test_the_python_api_is_frozen():
    import nestdsl

    assert sorted(nestdsl.__all__) == sorted(PUBLIC_API)
    assert all(callable(getattr(nestdsl, name)) for name in PUBLIC_API)


def test_main_help_shows_an_example():
    assert "example: nestdsl" in build_parser().format_help()


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_every_subcommand_help_shows_an_example(name):
    text = subcommands()[name].format_help()
    assert "example: nestdsl" in text or "example: torchrun" in text, text
