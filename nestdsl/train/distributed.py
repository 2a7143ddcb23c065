"""Where a training process runs: its device, its place in the process group, its random state.

`torchrun --nproc_per_node N -m nestdsl train ...` starts N processes with the environment
variables RANK, WORLD_SIZE and LOCAL_RANK set; `setup` detects them and joins the process group
(gloo on the CPU, nccl on CUDA). Without them the run is a single process and every collective
below is a no-op, so the training loop has one code path.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nestdsl.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for `--device` (auto, cpu, cuda or cuda:N); UserError if unusable."""
    name = (name or "auto").strip().lower()
    unknown = f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N"
    index: int | None = None
    if name.startswith("cuda:"):
        suffix = name.split(":", 1)[1]
        if not suffix.isdigit():
            raise UserError(unknown)
        index = int(suffix)
    elif name not in DEVICE_CHOICES:
        raise UserError(unknown)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    count = torch.cuda.device_count()
    if index is None:
        return torch.device("cuda", local_rank % count)  # under torchrun: one GPU per local rank
    if index >= count:
        raise UserError(f"device {name!r} does not exist: {count} GPU(s) visible")
    return torch.device("cuda", index)


@dataclass
class ProcessContext:
    """This process's rank, the number of processes, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # we initialized the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over all ranks (float64 so the sums add no rounding of their own)."""
        if not self.distributed:
            return list(values)
        buffer = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.tolist()

    def all_ok(self, ok: bool) -> bool:
        """True when every rank reports ok; lets ranks stop together when one fails."""
        if not self.distributed:
            return ok
        return self.all_reduce_sum([0.0 if ok else 1.0])[0] == 0.0

    def gather_to_main(self, obj: object) -> list | None:
        """Every rank's `obj`, in rank order, on the main rank (None elsewhere)."""
        if not self.distributed:
            return [obj]
        gathered: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        # nccl only moves CUDA tensors; gloo only CPU ones.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str) -> ProcessContext:
    """Resolve the device and, under torchrun, join (or reuse) the process group."""
    if not launched_by_torchrun():
        return ProcessContext(
            rank=0, world_size=1, local_rank=0, device=resolve_device(device_name)
        )
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            dist.init_process_group(backend=backend, device_id=device)
        else:
            dist.init_process_group(backend=backend)
        owns_group = True
    return ProcessContext(rank, world_size, local_rank, device, owns_group)


def teardown(context: ProcessContext) -> None:
    """Leave the process group we joined, after a finished run (after a failed one the process
    exits anyway, and destroying a group while another rank is still in a collective can hang).

    Every rank waits for the others first: a rank that closed its connections while another
    was still in its last collective could make gloo abort that rank. DDP's reducer holds the
    group, so it is collected before the group goes.
    """
    if not (context.owns_group and dist.is_initialized()):
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- random generators


def seed_everything(seed: int) -> None:
    """Seed torch, python `random` and numpy (when installed) in this process."""
    torch.manual_seed(seed)
    random.seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


def capture_rng() -> dict:
    """This process's random generator states: tensors for torch, JSON values for the rest."""
    state: dict = {
        "torch": torch.get_rng_state(),
        "python": [list(v) if isinstance(v, tuple) else v for v in random.getstate()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:  # numpy is optional for training; nothing to restore without it
        pass
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
