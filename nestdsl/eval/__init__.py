"""Evaluation tasks: one module per task, each a documented protocol with a JSON result.

    from nestdsl.eval import run_recall, RecallSettings, run_bpb
    result = run_recall("deltanet", [{"L": 64, "N": 8, "d_model": 64}], RecallSettings(steps=3000))

* `recall` (recall.py, data in mqar.py): multi-query associative recall trained from scratch
  (Zoology's MQAR), accuracy per (L, N, d_model) grid point;
* `bpb` (bpb.py): bits per byte on held-out text, for a trained run or an untrained spec;
* `needle` (needle.py, data in haystack.py): a single needle in a real-text haystack, trained
  at one length and tested at multiples of it, accuracy by depth and length;
* `in-context` (in_context.py): loss by position over long streams fed in pieces;
* `continual` (continual.py, metrics in forgetting.py): sequential training over the embedded
  domains, the accuracy matrix, backward transfer and forgetting.

Not a task but a diagnostic: `nestdsl.eval.write_probe.write_probe(SPEC)` says in a second
whether a spec's in-context memory can store a pair at initialization (the module, not
re-exported here, so that the module's name never shadows its function).

`nestdsl eval RUN_OR_SPEC --task TASK` runs them from the command line (nestdsl/commands/eval.py);
docs/evaluation.md gives the protocols and the measured results of the shipped specs.
"""

import importlib

from nestdsl.eval.bpb import run_bpb
from nestdsl.eval.mqar import IGNORE, MQARShape, mqar_rows, row_accuracy
from nestdsl.eval.recall import GRID_KEYS, RecallSettings, run_recall

TASKS = ("recall", "bpb", "needle", "in-context", "continual")  # module names ('-' as '_')


def task_module(task: str):
    """The module of `task`: FLAGS, run_cli and summary for `nestdsl eval` (commands/eval.py)."""
    return importlib.import_module(f"nestdsl.eval.{task.replace('-', '_')}")


__all__ = [
    "GRID_KEYS",
    "IGNORE",
    "TASKS",
    "MQARShape",
    "RecallSettings",
    "mqar_rows",
    "row_accuracy",
    "run_bpb",
    "run_recall",
    "task_module",
]
