"""The benchmark's open loop (bench/load.py): its publisher's ticks and its waits for the jobs it sent."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

import pytest

from bench.load import _TICK_S, OpenLoop, Outcome, _decoded, _RawSent, collector_paused, open_loop
from bench.workloads import Payload

pytestmark = pytest.mark.usefixtures("restored_gc")  # every open loop collects, freezes and pauses the collector


def _sent(sent_at: float) -> _RawSent:
    """A job as `RawLoad` hands it back, acknowledged and answered at once."""
    loop = asyncio.get_running_loop()
    ack, result = loop.create_future(), loop.create_future()
    ack.set_result(None)
    result.set_result(Outcome(sent_at + 0.001, "ok", 1))
    return _RawSent(sent_at, ack, result, ("0" * 32, "0" * 16))


class _InstantLoad:
    name = "instant"
    send_returns_when_queued = True

    def __init__(self) -> None:
        self.sent: list[float] = []

    def prepare(self, payloads: list[Payload]) -> list[Payload]:
        return list(payloads)

    async def send(self, prepared: Payload) -> _RawSent:
        now = time.time()
        self.sent.append(now)
        return _sent(now)


def test_open_loop_publishes_with_the_collector_off_and_turns_it_back_on() -> None:
    class Watched(_InstantLoad):
        collector_on: list[bool] = []

        async def send(self, prepared: Payload) -> _RawSent:
            self.collector_on.append(gc.isenabled())
            return await super().send(prepared)

    load = Watched()
    asyncio.run(open_loop(load, [Payload(task="recommend", inputs={"user_id": i}) for i in range(50)],
                          rate=10_000, share=0.5))

    assert len(load.collector_on) == 50 and not any(load.collector_on)
    assert gc.isenabled()


def test_open_loop_meters_the_cores_over_its_publishing_schedule_not_the_wait_for_results() -> None:
    class LateResults(_InstantLoad):
        """Every job's result comes 0.3 s after it was sent."""

        async def send(self, prepared: Payload) -> _RawSent:
            sent = await super().send(prepared)
            result = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.3, result.set_result, Outcome(time.time(), "ok", 1))
            return _RawSent(sent.sent_at, sent._ack, result, sent.trace)  # noqa: SLF001

    events: list[str] = []
    load = LateResults()

    def meter():  # noqa: ANN202
        events.append(f"started with {len(load.sent)} sent")
        started = time.monotonic()

        def since() -> dict[str, float]:
            when = "before" if time.monotonic() - started < 0.25 else "after"
            events.append(f"read with {len(load.sent)} sent, {when} the results came")
            return {"service": 0.5, "machine": 1.5}

        return since

    point = asyncio.run(open_loop(load, [Payload(task="recommend", inputs={"user_id": i}) for i in range(20)],
                                  rate=10_000, share=0.5, cores=meter))

    assert events == ["started with 0 sent", "read with 20 sent, before the results came"]
    assert point.cores == {"service": 0.5, "machine": 1.5}
    unmetered = asyncio.run(open_loop(load, [Payload(task="recommend", inputs={"user_id": 1})], rate=10, share=0.5))
    assert unmetered.cores == {}


def test_collector_paused_nests_and_leaves_a_collector_that_was_off_off() -> None:
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner one found it off: the outer one turns it back on
    assert gc.isenabled()

    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_open_loop_sends_every_job_and_sleeps_a_tick_at_a_time(monkeypatch) -> None:  # noqa: ANN001
    load = _InstantLoad()
    payloads = [Payload(task="recommend", inputs={"user_id": i}) for i in range(1000)]
    real_sleep, asked = asyncio.sleep, []

    async def sleep(delay: float, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        asked.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    point = asyncio.run(open_loop(load, payloads, rate=10_000, share=0.5))

    assert point.jobs == len(load.sent) == 1000
    # A job is due every 0.1 ms: a sleep until the next one would be at most that; a tick's is most of a millisecond
    # (less what sending the jobs due took).
    assert len(asked) > 10 and statistics.median(asked[1:]) > 0.5 * _TICK_S, sorted(asked)[:5]


def test_open_loop_counts_a_wake_up_made_late_by_a_busy_loop_as_lag() -> None:
    async def measured() -> OpenLoop:
        async def hog() -> None:  # another task holds the loop while the publisher sleeps
            await asyncio.sleep(0.07)  # (the schedule starts 50 ms after the call)
            time.sleep(0.05)

        hogging = asyncio.create_task(hog())
        point = await open_loop(_InstantLoad(), [Payload(task="recommend", inputs={"user_id": i}) for i in range(40)],
                                rate=400, share=0.5)
        await hogging
        return point

    assert asyncio.run(measured()).max_lag_ms >= 30


def test_open_loop_waits_on_the_jobs_futures_without_a_task_per_job() -> None:
    created: list[int] = []

    async def measured() -> None:
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def counting(loop: asyncio.AbstractEventLoop, coro, **kwargs):  # noqa: ANN001, ANN202
            created.append(1)
            return factory(loop, coro, **kwargs) if factory else asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting)
        await open_loop(_InstantLoad(), [Payload(task="recommend", inputs={"user_id": i}) for i in range(500)],
                        rate=50_000, share=0.5)

    asyncio.run(measured())
    assert len(created) < 10  # (the 500 jobs' acknowledgements and results are awaited as futures)


def test_decoded_reads_result_bytes_and_keeps_an_outcome_as_it_is() -> None:
    import msgpack

    outcome = Outcome(1.0, "ok", 3)
    assert _decoded(outcome) is outcome
    value = msgpack.packb({"job_id": "j", "status": "error", "timings": {"batch_size": 7}})
    assert _decoded((2.0, value)) == Outcome(2.0, "error", 7)
