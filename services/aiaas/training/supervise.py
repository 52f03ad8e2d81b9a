"""One training run on a thread of its own, watched from the event loop: progress, polls, time limit, stop.

The trainer's event loop must stay free while a model trains (it polls Kafka to keep its group
membership and publishes progress), so the training runs on a thread. Whatever that thread does,
the watcher ends with exactly one of: the run's result; `TrainingInterrupted` (the trainer is
stopping); `TimeLimitExceeded`; the AiaasError the run raised (InvalidJob, ...); or `TrainingFailed`
for anything else it raised (OSError, MemoryError, even SystemExit), so no exception from a
training ever reaches the trainer's loop as something it does not expect.

A run that is told to stop gets `grace_s` to reach its next check. One that does not (stuck
in a long call that never checks) is left behind: its thread is a daemon, so it neither blocks
the next job nor the process's exit, and its late result is dropped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import AiaasError, TimeLimitExceeded, TrainingFailed, TrainingInterrupted
from aiaas.training.protocol import ProgressCallback
from aiaas.training.stopping import StopSignal

__all__ = ["TrainingRun"]

T = TypeVar("T")


class TrainingRun(Generic[T]):
    """`work(stop, progress)` on a daemon thread; `watch()` waits for its one outcome."""

    def __init__(self, work: Callable[[StopSignal, ProgressCallback], T], stop: StopSignal, grace_s: float,
                 name: str = "training") -> None:
        self.signal = stop
        self._work, self._grace_s, self._name = work, grace_s, name

    def stop(self) -> None:
        """Ask the run to end at its next step (thread-safe; the watcher then raises TrainingInterrupted)."""
        self.signal.stop()

    async def watch(self, on_progress: Callable[[TrainingProgress], Awaitable[None]],
                    on_tick: Callable[[], Awaitable[None]], tick_s: float) -> T:
        """Start the run and wait for it, passing progress on and calling `on_tick` every `tick_s` meanwhile."""
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[TrainingProgress] = asyncio.Queue()
        finished: asyncio.Future = loop.create_future()
        report = lambda event: _call_soon(loop, progress.put_nowait, event)  # noqa: E731 - called from the thread
        threading.Thread(target=self._body, args=(loop, finished, report), name=self._name, daemon=True).start()
        ticked, give_up_at = loop.time(), None
        while not finished.done() or not progress.empty():
            getter = asyncio.ensure_future(progress.get())
            await asyncio.wait({getter, finished}, timeout=min(tick_s, self._grace_s),
                               return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await on_progress(getter.result())
            else:
                getter.cancel()
            if loop.time() - ticked >= tick_s:
                await on_tick()
                ticked = loop.time()
            if not finished.done() and (self.signal.stopped or self.signal.expired):
                give_up_at = give_up_at if give_up_at is not None else loop.time() + self._grace_s
                if loop.time() >= give_up_at:
                    finished.cancel()  # the thread's late outcome is dropped
                    raise self._left_behind()
        return _outcome(finished.result())

    def _body(self, loop: asyncio.AbstractEventLoop, finished: asyncio.Future, report: ProgressCallback) -> None:
        try:
            outcome: tuple[bool, object] = (True, self._work(self.signal, report))
        except BaseException as exc:  # noqa: BLE001 - a training thread's every exception becomes the job's outcome
            outcome = (False, exc)
        _call_soon(loop, _settle, finished, outcome)

    def _left_behind(self) -> Exception:
        expired = self.signal.expired
        self.signal.stop()  # the abandoned thread ends at its next check, if it ever gets there
        if expired:  # out of time is final, also when the trainer is stopping meanwhile
            return TimeLimitExceeded(f"training ran past the trainer's limit of {self.signal.time_limit_s:g} s "
                                     f"(AIAAS_TRAINER_MAX_TRAIN_S) and did not stop within {self._grace_s:g} s; "
                                     "it was left behind")
        return TrainingInterrupted(f"the trainer is stopping; training did not stop within {self._grace_s:g} s")


def _outcome(outcome: tuple[bool, object]):
    """The run's result, or the exception the watcher raises for what it raised (see the module docstring)."""
    ok, value = outcome
    if ok:
        return value
    if isinstance(value, (AiaasError, TrainingInterrupted)):
        raise value
    raise TrainingFailed(f"{type(value).__name__}: {value}"[:1000]) from value  # type: ignore[misc]


def _settle(future: asyncio.Future, outcome: tuple[bool, object]) -> None:
    if not future.done():  # cancelled: the run was left behind
        future.set_result(outcome)


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    """`call_soon_threadsafe`, quiet when the loop has closed (a run left behind ends after its trainer)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass
