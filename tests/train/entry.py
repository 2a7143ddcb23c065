"""Subprocess entry point for tests: train the toy model, alone or as one torchrun rank.

    python entry.py RUN_DIR --data FILE [--steps N] [--batch-size B] [--resume]
                    [--kill-in-checkpoint STEP]

`--kill-in-checkpoint STEP` sends SIGKILL to this process in the middle of writing checkpoint
STEP (after its weights file, before the rest), to test that a killed save leaves the previous
checkpoint usable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from helpers import tiny_config  # noqa: E402
from toymodel import toy_source  # noqa: E402

import nestdsl.train.checkpoint as checkpoint  # noqa: E402
from nestdsl.errors import UserError  # noqa: E402
from nestdsl.train import train  # noqa: E402


def kill_in_checkpoint(step: int) -> None:
    original = checkpoint._write_file

    def write(path: Path, data: bytes) -> None:
        if (
            path.parent.name.startswith(f".tmp-step-{step:08d}")
            and path.name == "optimizer.safetensors"
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        original(path, data)

    checkpoint._write_file = write


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-in-checkpoint", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the in-process tests do, so results compare exactly
    if args.kill_in_checkpoint is not None:
        kill_in_checkpoint(args.kill_in_checkpoint)
    config = tiny_config(steps=args.steps, batch_size=args.batch_size, data=args.data)
    try:
        train(toy_source(), config, args.run_dir, resume=args.resume, progress=False)
    except UserError as err:
        print(f"entry: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
