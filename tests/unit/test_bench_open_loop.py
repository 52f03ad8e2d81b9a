"""The benchmark's open loop (bench/load.py): its publisher's ticks and its waits for the jobs it sent."""

from __future__ import annotations

import asyncio
import time

from bench.load import Outcome, _decoded, _RawSent, open_loop
from bench.workloads import Payload


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


def test_open_loop_sends_every_job_in_ticks_of_at_most_one_per_millisecond() -> None:
    load = _InstantLoad()
    payloads = [Payload(task="recommend", inputs={"user_id": i}) for i in range(1000)]

    point = asyncio.run(open_loop(load, payloads, rate=10_000, share=0.5))

    assert point.jobs == len(load.sent) == 1000
    # 1000 jobs at 10,000/s take 0.1 s: in ticks of at least 1 ms there are at most ~100 groups, not 1000 wake-ups.
    groups = 1 + sum(1 for a, b in zip(load.sent, load.sent[1:], strict=False) if b - a > 0.0005)
    assert groups <= 120
    assert 0.9 <= point.p50_ms <= 1.1  # timed from each job's own send, not its tick


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
