"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM: finish the update, checkpoint, exit.

A signal arriving in the middle of an update cannot be turned into a checkpoint there: the
weights may be half-stepped (an optimizer interrupted between two parameters). So the handler
only records the request; the loop reads it after each complete update, writes a checkpoint of
exactly that step (atomically, like every checkpoint) and stops. A second Ctrl-C while that is
pending raises KeyboardInterrupt at once, for a user who does not want to wait; the previous
complete checkpoint is then what `--resume` continues from.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopRequest:
    """What the handlers recorded: `signal` is None until SIGINT or SIGTERM arrives."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - the signal module's signature
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal = signum

    def time_up(self) -> None:
        """A caller's time limit (any thread): stop at the next step boundary, as SIGINT would.
        Not a signal sent to the process: one that lands before the loop's handlers are in
        place (while the model builds) would raise KeyboardInterrupt wherever the main thread
        is, even in a finalizer that swallows it, and the limit would be lost."""
        if self.signal is None:
            self.signal = signal.SIGALRM

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_on_signals(request: StopRequest | None = None) -> Iterator[StopRequest]:
    """Record SIGINT/SIGTERM in `request` (a new one by default) while the block runs; restore
    the old handlers.

    Outside the main thread (handlers cannot be installed there) nothing is caught and Ctrl-C
    behaves as before.
    """
    request = request or StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, request._handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
