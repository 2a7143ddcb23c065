"""Training and scoring one candidate of a search, with its cost (parameters, tokens/s).

Every candidate is trained the same way (one `TrainConfig` from the search settings, the same
seed, so the same data order and initialization stream) and scored with the evaluation suite:

* `bpb` (default): bits per byte of the run folder on the held-out tail of the corpus
  (`nestdsl.eval.bpb.run_bpb`, the protocol of `nestdsl eval --task bpb`), `score_bytes` bytes;
* `recall`: MQAR recall accuracy (`nestdsl.eval.recall.run_recall`) at the suite's setting
  (L 64, N 8, d_model 64, 2 heads, 2 layers), trained `steps` steps: every candidate is resized
  to that one width by the recall protocol, so `--tolerance` does not apply there.

Parameter matching (bpb): a candidate whose parameter count is off the base's by more than the
tolerance is resized by `nestdsl.compare.match.match_params` (width only, d_model and what
follows it), as `nestdsl compare --match-params` does; if no width matches, the candidate is
trained at its own size and the leaderboard says it is unmatched.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from nestdsl.errors import SpecError, UserError


def count_params(path: str | Path, overrides: list[str] = ()) -> int:
    """Every parameter of the compiled module, counted on the `meta` device."""
    import nestdsl
    from nestdsl.compiler.count import count_by_level

    checked = nestdsl.load(str(path), overrides=list(overrides) or None)
    return sum(level.parameters for level in count_by_level(checked.plan).values())


def match_overrides(path: str | Path, target: int, tolerance: float) -> tuple[list[str], str]:
    """(`--set` overrides, note) that bring `path` within `tolerance` of `target` parameters."""
    try:
        from nestdsl.compare.match import match_params
    except ImportError:  # `nestdsl compare` not installed in this build
        return [], "unmatched (no nestdsl.compare.match in this build)"
    try:
        return list(match_params(str(path), target, tolerance)), "matched"
    except (UserError, SpecError) as err:
        return [], f"unmatched ({str(err).splitlines()[0][:160]})"


def train_and_score(path: Path, run_dir: Path, settings, overrides: list[str], *,
                    steps: int, schedule_steps: int | None = None, resume: bool = False,
                    time_limit: float | None = None) -> dict:  # fmt: skip
    """Train the spec at `path` to `steps` (continuing `run_dir` when `resume`) and score it.

    Returns {score, bpb|recall, tokens_per_s, train_s, steps} or {error} when training fails
    (a loss that is not finite, a model the runtime cannot run, training past `time_limit`
    seconds): a failed candidate ranks last.
    """
    from nestdsl.train import TrainConfig, TrainingInterrupted, spec_source, train
    from nestdsl.train.signals import StopRequest

    if settings.objective == "recall":
        return _recall(path, settings, steps)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # the candidate in flight when the search stopped starts again
    config = TrainConfig(
        steps=steps, batch_size=settings.batch_size, seq_len=settings.seq_len, seed=settings.seed,
        eval_every=steps, eval_batches=2, ckpt_every=steps, keep_checkpoints=1,
        log_every=max(1, min(10, steps)), data=settings.data, schedule_steps=schedule_steps,
    )  # fmt: skip
    fired, stop = threading.Event(), StopRequest()
    timer = None
    if time_limit:  # Ctrl-C's path: the loop checkpoints and stops at the next step boundary
        timer = threading.Timer(time_limit, lambda: (fired.set(), stop.time_up()))
        timer.daemon = True
        timer.start()
    over_time = {"error": f"over the time limit ({time_limit or 0:g} s per candidate)", "steps": steps}
    try:
        source = spec_source(str(path), overrides)
        train(source, config, run_dir, resume=resume and run_dir.exists(), progress=False,
              stop=stop)
    except (TrainingInterrupted, KeyboardInterrupt):
        if not fired.is_set():
            raise KeyboardInterrupt from None  # the user's Ctrl-C stops the search
        return over_time
    except Exception as err:  # noqa: BLE001 - a failing candidate fails, not the search
        # A failure seen after the limit passed is reported as the limit, which came first (the
        # loop notices the interrupt only at a step boundary, after that step's own checks).
        if fired.is_set():
            return over_time
        if isinstance(err, (UserError, SpecError)):
            return {"error": str(err).splitlines()[0][:240], "steps": steps}
        first = (str(err).splitlines() or [""])[0][:200]
        return {"error": f"crash {type(err).__name__}: {first}", "steps": steps}
    finally:
        if timer is not None:
            timer.cancel()
    from nestdsl.eval.bpb import run_bpb

    scored = run_bpb(str(run_dir), max_bytes=settings.score_bytes, progress=False)
    rate, seconds = _speed(run_dir)
    return {"score": scored["bpb"], "bpb": scored["bpb"], "tokens_per_s": rate, "train_s": seconds,
            "steps": steps}  # fmt: skip


def _speed(run_dir: Path) -> tuple[float | None, float | None]:
    """Mean training tokens/s and training seconds, from the run's metrics.jsonl."""
    rates, elapsed = [], None
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None, None
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            rates.append(record.get("tokens_per_s"))
            elapsed = record.get("elapsed_s", elapsed)
    rates = [r for r in rates if r]
    return (round(sum(rates) / len(rates), 1) if rates else None), elapsed


def _recall(path: Path, settings, steps: int) -> dict:
    from nestdsl.eval.recall import RecallSettings, run_recall

    try:
        result = run_recall(str(path), [{}], RecallSettings(steps=steps, eval_rows=256,
                            seed=settings.seed), progress=False)  # fmt: skip
    except (UserError, SpecError) as err:
        return {"error": str(err).splitlines()[0][:240], "steps": steps}
    point = result["points"][0]
    return {"score": point["accuracy"], "recall": point["accuracy"], "tokens_per_s": None,
            "train_s": None, "steps": steps}  # fmt: skip
