"""`nestdsl compare`: train several specs on the same data and budget, evaluate, report.

    from nestdsl.compare import match_params, count_params
    overrides = match_params("hope", count_params("transformer"))  # ['dims.d_model=96', ...]

* `match.py`: the `--set` overrides that resize a spec's width to a target parameter count.
"""

from nestdsl.compare.match import count_params, match_params

__all__ = ["count_params", "match_params"]
