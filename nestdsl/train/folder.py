"""The run folder: `RUN/spec.yaml` and `RUN/config.json` record what a run is (and
`RUN/tokenizer.json` its trained tokenizer, for tokenizers other than bytes), and resuming it
continues exactly that run.

`RunFolder` refuses to start a run over one that has checkpoints (or over a folder that is not a
run), and on `--resume` checks that the spec, its overrides, the data, the tokenizer and the
settings are the run's. `resume_overrides()` gives a run's recorded `--set` overrides (refusing only a conflict)
and `resume_config()` its settings with the changeable ones applied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nestdsl.data.tokenizer import BYTES, Tokenizer, tokenizer_from_json
from nestdsl.errors import UserError
from nestdsl.train.checkpoint import latest_checkpoint, step_dirs, write_file_atomically
from nestdsl.train.config import ModelSource, TrainConfig, flag_name

CONFIG_FORMAT = "nestdsl-run-1"
# Everything a run folder may contain (and so may be replaced when a new run starts there).
RUN_FILES = {
    "spec.yaml",
    "config.json",
    "tokenizer.json",
    "metrics.jsonl",
    "loss.png",
    "checkpoints",
    "tensorboard",
}

# Settings a resumed run may change: they do not alter the trajectory of the weights. A larger
# `steps` extends the run past its schedule (`schedule_steps`, fixed at the start) at the floor
# rate: the learning rate never jumps on resume.
# Settings a resumed run may change: none of them changes the trajectory (recomputation gives
# the same numbers).
CHANGEABLE_ON_RESUME = ("steps", "device", "eval_every", "ckpt_every", "keep_checkpoints", "log",
                        "recompute")  # fmt: skip
# Settings that runs written before the setting existed had at this value.
IMPLICIT_SETTINGS = {"tokenizer": BYTES}

class RunFolder:
    """The files of one run: spec.yaml, config.json, tokenizer.json, metrics.jsonl, loss.png,
    checkpoints/."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.spec = self.root / "spec.yaml"
        self.config = self.root / "config.json"
        self.tokenizer = self.root / "tokenizer.json"
        self.metrics = self.root / "metrics.jsonl"
        self.plot = self.root / "loss.png"
        self.checkpoints = self.root / "checkpoints"

    def has_checkpoints(self) -> bool:
        return bool(step_dirs(self.checkpoints)) or (self.checkpoints / "latest").exists()

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoints)

    def _is_run_config(self) -> bool:
        try:
            return json.loads(self.config.read_text()).get("format") == CONFIG_FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    def read_config(self) -> dict:
        try:
            saved = json.loads(self.config.read_text())
        except FileNotFoundError:
            raise UserError(
                f"{self.root} is not a run folder: {self.config.name} is missing"
            ) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{self.config} is unreadable or corrupt ({err})") from None
        if not isinstance(saved, dict) or saved.get("format") != CONFIG_FORMAT:
            raise UserError(f"{self.config} is not a nestdsl run config")
        return saved

    def read_tokenizer(self) -> Tokenizer:
        """The run's tokenizer: bytes, or the BPE saved in tokenizer.json, checked against the
        SHA-256 config.json recorded when the run started."""
        saved = self.read_config()
        name = saved.get("train", {}).get("tokenizer", BYTES)
        if name == BYTES:
            return tokenizer_from_json(name, None)
        try:
            text = self.tokenizer.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(
                f"{self.root} was trained with tokenizer {name}, but its {self.tokenizer.name} "
                "is missing"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read {self.tokenizer}: {err}") from None
        tokenizer = tokenizer_from_json(name, text)
        expected = saved.get("tokenizer", {}).get("sha256")
        if tokenizer.sha256 != expected:
            raise UserError(
                f"{self.tokenizer} is not the tokenizer {self.root} was trained with "
                "(its SHA-256 differs from the one in config.json)"
            )
        return tokenizer

    def check_new(self) -> None:
        """Refuse to start a new run here: a folder with checkpoints, or one that is not a run."""
        if self.has_checkpoints():
            raise UserError(
                f"{self.root} already holds a run with checkpoints; "
                "pass --resume to continue it or --out to start a new run elsewhere"
            )
        if self.root.is_dir():
            # Never scribble over a folder that is not a run (e.g. --out . in a project).
            strangers = sorted(
                p.name
                for p in self.root.iterdir()
                if p.name not in RUN_FILES and ".tmp-" not in p.name
            )
            if strangers or (self.config.exists() and not self._is_run_config()):
                shown = ", ".join(strangers[:3]) or self.config.name
                raise UserError(
                    f"{self.root} is not empty and not a run folder (it holds {shown}); choose another --out"
                )
        elif self.root.exists():
            raise UserError(f"{self.root} exists and is not a folder; choose another --out")

    def start(
        self,
        source: ModelSource,
        config: TrainConfig,
        record: dict,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        """Begin a new run here: refuse a folder with checkpoints, clear old logs, write the spec
        (and the tokenizer, when it has a file)."""
        self.check_new()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in (self.metrics, self.plot):
                stale.unlink(missing_ok=True)
            shutil.rmtree(self.root / "tensorboard", ignore_errors=True)  # an earlier start's
            write_file_atomically(self.spec, source.spec_text.encode())
            saved = tokenizer.to_json() if tokenizer is not None else None
            if saved is None:
                self.tokenizer.unlink(missing_ok=True)  # an earlier start's
            else:
                write_file_atomically(self.tokenizer, saved.encode())
            body = {
                "format": CONFIG_FORMAT,
                "spec": source.identity(),
                "train": config.as_dict(),
                **record,
            }
            write_file_atomically(self.config, json.dumps(body, indent=1).encode())
        except OSError as err:
            raise UserError(
                f"cannot write the run folder {self.root}: {err.strerror or err}"
            ) from None

    def schedule_steps(self) -> int | None:
        """The schedule length the run here started with (None when there is no run)."""
        try:
            saved = self.read_config()
        except UserError:
            return None
        length = saved.get("train", {}).get("schedule_steps")
        return length or saved.get("schedule", {}).get("total_steps")

    def check_resume(self, source: ModelSource, config: TrainConfig, record: dict) -> dict:
        """Check that resuming here with `source`, `config` and `record` continues the same run."""
        if not self.root.is_dir():
            raise UserError(f"nothing to resume: {self.root} does not exist")
        saved = self.read_config()
        if self.latest_checkpoint() is None:
            raise UserError(
                f"nothing to resume: {self.root} has no checkpoint yet; start it again without --resume"
            )
        spec = saved["spec"]
        if spec["name"] != source.name:
            raise UserError(
                f"{self.root} was trained from spec {spec['name']!r}, not {source.name!r}; "
                "resume with the same spec or pass another --out"
            )
        if spec["sha256"] != source.spec_sha256:
            raise UserError(
                f"the text of spec {source.name!r} differs from the one {self.root} was trained with; "
                f"resume with the saved copy: {self.spec}"
            )
        if spec["overrides"] != list(source.overrides):
            shown = " ".join(spec["overrides"]) or "none"
            raise UserError(
                f"{self.root} was started with --set overrides {shown}; resume with the same ones"
            )  # resume_overrides() gives them; a ModelSource made by hand may not
        data_now, data_then = record.get("data", {}), saved.get("data", {})
        if data_then.get("sha256") != data_now.get("sha256"):
            raise UserError(
                f"the training data differs from the data {self.root} was trained on "
                f"({data_then.get('name', '?')}); resume with the same --data"
            )
        then, now = {**IMPLICIT_SETTINGS, **saved["train"]}, config.as_dict()
        for name, value in now.items():
            if name in CHANGEABLE_ON_RESUME or then.get(name) == value:
                continue
            raise UserError(
                f"{self.root} was started with {flag_name(name)} {then.get(name)}, now {value}; a resumed "
                "run keeps its settings (only --steps, --device, --eval-every, --ckpt-every, "
                "--keep-checkpoints, --log and --recompute may change)"
            )
        if config.carry_state and saved.get("world_size") != record.get("world_size"):
            raise UserError(
                f"{self.root} carries in-context memory for {saved.get('world_size')} process(es); "
                f"resume it with the same number, not {record.get('world_size')}"
            )
        return saved

    def update_config(self, source: ModelSource, config: TrainConfig, record: dict) -> None:
        """Rewrite config.json after a resume changed one of the changeable settings."""
        body = {
            "format": CONFIG_FORMAT,
            "spec": source.identity(),
            "train": config.as_dict(),
            **record,
        }
        try:
            write_file_atomically(self.config, json.dumps(body, indent=1).encode())
        except OSError as err:
            raise UserError(f"cannot write {self.config}: {err.strerror or err}") from None


def _override_pairs(overrides: list[str]) -> dict[str, str]:
    pairs = {}
    for item in overrides:
        key, _, value = item.partition("=")
        pairs[key.strip()] = value.strip()
    return pairs


def resume_overrides(run_dir: str | Path, given: list[str]) -> list[str]:
    """The `--set` overrides a run was started with; `given` ones must agree with them.

    Repeating an override (or leaving it out) is fine; a new key or another value would build a
    different model than the checkpoint's, and is refused with the run's own value.
    """
    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise UserError(f"nothing to resume: {folder.root} does not exist")
    recorded = list(folder.read_config()["spec"].get("overrides") or [])
    saved = _override_pairs(recorded)
    for key, value in _override_pairs(list(given)).items():
        if key not in saved:
            raise UserError(
                f"{folder.root} was started without --set {key}; a resumed run keeps its model "
                "(drop the flag, or start a new run with --out)"
            )
        if saved[key] != value:
            raise UserError(
                f"{folder.root} was started with --set {key}={saved[key]}, not {value}; a resumed "
                "run keeps its model (drop the flag to reuse the run's value)"
            )
    return recorded


def resume_config(run_dir: str | Path, given: dict) -> TrainConfig:
    """The saved settings of the run in `run_dir` with the explicitly `given` ones applied.

    Given settings that would change the run's trajectory raise UserError (see check_resume).
    """
    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise UserError(f"nothing to resume: {folder.root} does not exist")
    record = folder.read_config()
    saved = TrainConfig.from_dict(record["train"]).as_dict()
    if saved.get("schedule_steps") is None:  # runs of earlier versions: the recorded schedule
        saved["schedule_steps"] = record.get("schedule", {}).get("total_steps") or saved["steps"]
    for name, value in given.items():
        if name not in saved:
            raise ValueError(f"unknown training setting {name!r}")
        if name not in CHANGEABLE_ON_RESUME and saved[name] != value:
            raise UserError(
                f"{folder.root} was started with {flag_name(name)} {saved[name]}, not {value}; a resumed "
                "run keeps its settings (only --steps, --device, --eval-every, --ckpt-every, "
                "--keep-checkpoints, --log and --recompute may change)"
            )
        saved[name] = value
    return TrainConfig.from_dict(saved)
