"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (what Slurm sends before it kills a job) ask the
training loop to stop between two steps, so the run can write a checkpoint and its files."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Callable for `train(stop=...)`: the name of the signal received, or None."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self) -> str | None:
        return self.reason


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While active, the first SIGINT/SIGTERM sets the request; a second SIGINT interrupts at
    once (KeyboardInterrupt), for a user who does not want to wait for the step to finish."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # e.g. a thread launcher
        yield request
        return

    def handle(signum: int, frame) -> None:
        if request.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.reason = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
