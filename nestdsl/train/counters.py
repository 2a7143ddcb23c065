"""The training loop's running numbers: the loss-averaging window and the last losses.

A logged train loss is the mean over the updates since the last log line, so a checkpoint
written between two log lines must carry the partial window for a resumed run to log the same
numbers as an uninterrupted one. This object is that state, with its checkpoint form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nestdsl.train.metrics import bits_per_byte


@dataclass
class LoopCounters:
    window_loss_sum: float = 0.0  # sum of the window's per-update mean losses
    window_steps: int = 0
    window_bytes: float = 0.0  # bytes covered by the targets of the window's updates
    last_train_loss: float | None = None
    last_val_loss: float | None = None
    last_train_bpb: float | None = None
    last_val_bpb: float | None = None

    def add(self, loss: float, covered: float) -> None:
        """One update's mean loss and the bytes its targets cover."""
        self.window_loss_sum += loss
        self.window_steps += 1
        self.window_bytes += covered

    def close_window(self, tokens_per_step: int) -> float:
        """Ends the window: sets the last train loss and bits per byte; returns the loss."""
        mean = self.window_loss_sum / self.window_steps
        per_token = self.window_bytes / (self.window_steps * tokens_per_step)
        self.last_train_loss, self.last_train_bpb = mean, bits_per_byte(mean, per_token)
        self.window_loss_sum, self.window_steps, self.window_bytes = 0.0, 0, 0.0
        return mean

    def set_validation(self, loss: float, bpb: float) -> None:
        self.last_val_loss, self.last_val_bpb = loss, bpb

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, loop: dict, tokens_per_step: int) -> LoopCounters:
        """A checkpoint's counters; those written before tokenizers existed have no byte
        counts, and their runs read one byte per token."""
        counters = cls(**{k: loop[k] for k in ("window_loss_sum", "window_steps",
                                                "last_train_loss", "last_val_loss")})  # fmt: skip
        counters.window_bytes = loop.get("window_bytes",
                                         float(counters.window_steps * tokens_per_step))  # fmt: skip
        counters.last_train_bpb = loop.get("last_train_bpb", _bpb(counters.last_train_loss))
        counters.last_val_bpb = loop.get("last_val_bpb", _bpb(counters.last_val_loss))
        return counters


def _bpb(loss: float | None) -> float | None:
    """Bits per byte of a loss logged by a byte run (one byte per token)."""
    return None if loss is None else bits_per_byte(loss)
