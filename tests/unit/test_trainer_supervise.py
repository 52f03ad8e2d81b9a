"""A training run on its own thread ends in exactly one outcome: its result, a stop, a time limit, or a failure."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from aiaas.contract.envelopes import TrainingProgress
from aiaas.errors import InvalidJob, TimeLimitExceeded, TrainingFailed, TrainingInterrupted
from aiaas.training.stopping import StopSignal
from aiaas.training.supervise import TrainingRun

# --- StopSignal ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_signal_lets_the_run_go_on():
    StopSignal().check()
    StopSignal(60).check()
    StopSignal()()  # a StopSignal is itself the `interrupt` hook the training loops take


def test_stop_interrupts_and_the_time_limit_exceeds():
    stop = StopSignal()
    stop.stop()
    with pytest.raises(TrainingInterrupted):
        stop.check()
    clock = Clock()
    limited = StopSignal(5, clock=clock)
    clock.now += 4.9
    limited.check()
    clock.now += 0.1
    with pytest.raises(TimeLimitExceeded, match="limit of 5 s"):
        limited.check()


def test_out_of_time_wins_over_a_stop():
    clock = Clock()
    both = StopSignal(1, clock=clock)
    both.stop()
    clock.now += 2
    with pytest.raises(TimeLimitExceeded):  # the job would run out of time again: it fails now
        both.check()


def test_time_limit_exceeded_is_a_final_aiaas_error():
    assert not TimeLimitExceeded("x").retriable and TimeLimitExceeded("x").type_name == "TimeLimitExceeded"


# --- TrainingRun ---------------------------------------------------------------------------------


async def watch(work, stop: StopSignal | None = None, grace_s: float = 5.0, tick_s: float = 0.05):
    """Run `work` and collect its progress and the number of ticks."""
    events: list[TrainingProgress] = []
    ticks = []

    async def on_progress(event):
        events.append(event)

    async def on_tick():
        ticks.append(time.monotonic())

    run = TrainingRun(work, stop or StopSignal(), grace_s)
    outcome = await run.watch(on_progress, on_tick, tick_s)
    return outcome, events, ticks


def epochs(n: int, pause_s: float = 0.0):
    """A fake training: `n` epochs, each checking the stop signal and reporting progress."""

    def work(stop: StopSignal, report):
        for epoch in range(1, n + 1):
            stop.check()
            time.sleep(pause_s)
            report(TrainingProgress(epoch=epoch, epochs=n))
        return "candidate"

    return work


async def test_the_result_and_every_progress_event_come_back_in_order():
    outcome, events, _ = await watch(epochs(5))
    assert outcome == "candidate" and [e.epoch for e in events] == [1, 2, 3, 4, 5]


async def test_the_loop_ticks_while_the_run_trains():
    outcome, _, ticks = await watch(epochs(10, pause_s=0.03), tick_s=0.05)
    assert outcome == "candidate" and len(ticks) >= 3  # the consumer keeps polling meanwhile


@pytest.mark.parametrize("raised", [OSError(28, "No space left on device"), MemoryError(), ValueError("bug"),
                                    KeyError("weights"), SystemExit(3), KeyboardInterrupt()])
async def test_anything_a_training_thread_raises_becomes_training_failed(raised):
    def work(stop, report):
        raise raised

    with pytest.raises(TrainingFailed, match=type(raised).__name__):
        await watch(work)


async def test_an_aiaas_error_from_the_run_is_kept_as_it_is():
    def work(stop, report):
        raise InvalidJob("vision training data needs images")

    with pytest.raises(InvalidJob, match="needs images"):
        await watch(work)


async def test_a_run_past_its_time_limit_ends_at_its_next_step():
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        await watch(epochs(10_000, pause_s=0.01), StopSignal(0.3))
    assert time.monotonic() - started < 2


async def test_a_run_that_never_checks_is_left_behind_after_the_grace_period():
    release = threading.Event()

    def stuck(stop, report):
        release.wait(30)  # a long call that never looks at the signal
        return "too late"

    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="left behind"):
        await watch(stuck, StopSignal(0.2), grace_s=0.3)
    assert time.monotonic() - started < 3
    release.set()  # its late result is dropped without an error on a closed loop


async def test_stop_interrupts_a_run_between_steps():
    stop = StopSignal()
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, stop.stop)
    started = time.monotonic()
    with pytest.raises(TrainingInterrupted):
        await watch(epochs(10_000, pause_s=0.01), stop)
    assert time.monotonic() - started < 2


async def test_stop_on_a_stuck_run_returns_after_the_grace_period():
    release = threading.Event()
    stop = StopSignal()
    asyncio.get_running_loop().call_later(0.1, stop.stop)
    with pytest.raises(TrainingInterrupted, match="did not stop within"):
        await watch(lambda s, r: release.wait(30), stop, grace_s=0.3)
    release.set()


async def test_a_run_that_finishes_despite_a_stop_keeps_its_result():
    def last_step(stop, report):
        stop.stop()  # SIGTERM arrives during export: the run is past its last check and finishes
        return "candidate"

    outcome, _, _ = await watch(last_step)
    assert outcome == "candidate"


async def test_the_next_run_starts_while_an_abandoned_one_still_hangs():
    release = threading.Event()
    with pytest.raises(TimeLimitExceeded):
        await watch(lambda s, r: release.wait(30), StopSignal(0.1), grace_s=0.1)
    outcome, events, _ = await watch(epochs(3))  # the trainer serves the next job at once
    assert outcome == "candidate" and len(events) == 3
    release.set()
