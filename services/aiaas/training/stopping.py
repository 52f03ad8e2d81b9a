"""How a running training is asked to end between two steps: the trainer is stopping, or the job's time is up.

Python cannot kill a thread, so training loops check a `StopSignal` at every optimiser step (and
between the phases around it). `check()` raises there: `TrainingInterrupted` when the trainer
was told to stop (SIGTERM; the job is not committed and runs again after restart), or
`TimeLimitExceeded` once the job's wall-time limit has passed (the job ends `failed`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aiaas.errors import TimeLimitExceeded, TrainingInterrupted

__all__ = ["StopSignal", "TrainingInterrupted"]


class StopSignal:
    """Set from the event loop, checked from the training thread (thread-safe)."""

    def __init__(self, time_limit_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.time_limit_s = time_limit_s
        self._clock = clock
        self._deadline = None if time_limit_s is None else clock() + time_limit_s
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Ask the run to end at its next check (the trainer is shutting down)."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopped.is_set()

    @property
    def expired(self) -> bool:
        """Whether the time limit has passed."""
        return self._deadline is not None and self._clock() >= self._deadline

    def check(self) -> None:
        """Raise TimeLimitExceeded or TrainingInterrupted when the run must end; return at once otherwise.

        Out of time comes first: such a job would fail on its next run too, so it ends now.
        """
        if self.expired:
            raise TimeLimitExceeded(f"training ran past the trainer's limit of {self.time_limit_s:g} s "
                                    "(AIAAS_TRAINER_MAX_TRAIN_S); ask for fewer epochs or less data")
        if self._stopped.is_set():
            raise TrainingInterrupted("the trainer is stopping; the job will run again")

    __call__ = check
    """A StopSignal is the `interrupt` hook the model types' training loops take."""
