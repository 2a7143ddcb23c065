"""`nestdsl compare`: train several specs on the same data and budget, evaluate, report.

    from nestdsl.compare import CompareSettings, compare, match_params, count_params
    overrides = match_params("hope", count_params("transformer"))  # ['dims.d_model=96', ...]
    paths = compare(CompareSettings(("transformer", "hope"), budget=200_000,
                                    match_params=True, seeds=(0, 1)), "runs/compare")

* `match.py`: the `--set` overrides that resize a spec's width to a target parameter count;
* `settings.py`: what a comparison is (`CompareSettings`) and its command-line parsing;
* `runs.py`: one `nestdsl train` run folder per (spec, seed), each task's result in it,
  finished work reused on `--resume`;
* `summary.py`: each column's mean and spread over seeds, and its winner;
* `report.py` + `plots.py`: report.md, report.json, loss curves and recall heat maps.

docs/evaluation.md ("Comparing specs") describes the protocol and holds a measured report.
"""

from __future__ import annotations

from pathlib import Path

from nestdsl.compare.match import count_params, match_params
from nestdsl.compare.settings import CompareSettings


def compare(settings: CompareSettings, out: str | Path) -> dict:
    """Run (or resume) the comparison into `out`; the paths of the report and its figures,
    and `actions`: how many trainings and task results were computed, resumed or reused."""
    from nestdsl.compare.report import write_report
    from nestdsl.compare.runs import run_all

    out = Path(out)
    outcome = run_all(settings, out)
    return {**write_report(outcome, out), "actions": outcome["actions"]}


__all__ = ["CompareSettings", "compare", "count_params", "match_params"]
