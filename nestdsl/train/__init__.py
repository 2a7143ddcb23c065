"""Training compiled nestdsl models: the loop, its settings, checkpoints, metrics and sampling."""

from nestdsl.train.config import (
    ModelSource,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    spec_source,
)
from nestdsl.train.folder import RunFolder, resume_config, resume_overrides
from nestdsl.train.generate import (
    generate_bytes,
    generate_from_run,
    generate_text,
    load_run_model,
)
from nestdsl.train.loop import train
from nestdsl.train.metrics import bits_per_byte
from nestdsl.train.run import Run, load_run

__all__ = [
    "ModelSource",
    "Run",
    "RunFolder",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "bits_per_byte",
    "generate_bytes",
    "generate_from_run",
    "generate_text",
    "load_run",
    "load_run_model",
    "resume_config",
    "resume_overrides",
    "spec_source",
    "train",
]
