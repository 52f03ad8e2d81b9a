"""The client's readers and handles, over an in-memory fake of the consumer (the real broker: integration).

What is checked: no record stops a reader (hostile headers, bodies, keys, and records aiokafka itself
cannot parse); readers follow partitions added to their topic; the result listener restarts after an
error while handles wait; a handle that timed out is forgotten; two handles for one job id both complete.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry import trace

from aiaas.client.client import JobHandle, _Reader, _receive, _ResultListener
from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job, Result, TrainingProgress
from aiaas.settings import KafkaSettings
from aiaas.tracing.conventions import inject_headers

TOPIC = "p.vision.results"
MAX_BYTES = 1 << 20
TRACER = trace.get_tracer("test")


class Unparseable:
    """A record aiokafka cannot parse (e.g. a header key that is not UTF-8)."""


def record(job_id: str | None, offset: int = 0, partition: int = 0, *, status: str = "ok", value: bytes | None = None,
           key: bytes | None = ..., headers=()) -> ConsumerRecord:
    """A consumed record on TOPIC: by default the final result of `job_id`, keyed by it."""
    if value is None:
        value = encode(Result(job_id=job_id, model="vision", status=status,
                              progress=TrainingProgress(epoch=offset, epochs=9) if status == "running" else None))
    key = job_id.encode() if key is ... else key
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, key, value, None, len(key or b""), len(value), list(headers))


class FakeConsumer:
    """The parts of AIOKafkaConsumer a client reader uses, over in-memory partitions (`logs`, shared like a broker).

    As aiokafka does, `getmany` raises on an `Unparseable` entry and leaves that partition's position
    before it; partitions it took records from earlier in the same call keep their moved positions,
    and those records are not returned. `partitions` is the topic's partition count in metadata.
    """

    def __init__(self, logs: dict[int, list], *, fail_first: BaseException | None = None) -> None:
        self.logs = logs
        self.partitions = len(logs)
        self.fail_first = fail_first
        self.calls = 0
        self.stopped = False
        self.at: dict[TopicPartition, int | None] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.at)

    def assign(self, tps) -> None:
        self.at = {tp: None for tp in tps}  # positions reset, as aiokafka's assign does

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.at[tp] = 0

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.at[tp] = len(self.logs[tp.partition])

    async def position(self, tp: TopicPartition) -> int:
        return self.at[tp]

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return len(self.logs[tp.partition])

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None):
        self.calls += 1
        if self.fail_first is not None:
            exc, self.fail_first = self.fail_first, None
            raise exc
        out = {}
        for tp in sorted(partitions or self.at):
            log, at = self.logs[tp.partition], self.at[tp]
            taken = []
            while at < len(log) and (max_records is None or len(taken) < max_records):
                if isinstance(log[at], Unparseable):
                    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
                taken.append(log[at])
                at += 1
            self.at[tp] = at
            if taken:
                out[tp] = taken
        if not out:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return out

    async def stop(self) -> None:
        self.stopped = True


def reader_over(consumer: FakeConsumer, *, at_end: bool = False) -> _Reader:
    tps = [TopicPartition(TOPIC, p) for p in range(consumer.partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, len(consumer.logs[tp.partition]) if at_end else 0)
    return _Reader(consumer, TOPIC, follow=True, positions={tp: consumer.at[tp] for tp in tps}, follow_every_s=0)


async def drain(reader: _Reader, rounds: int = 5) -> list[tuple[int, int]]:
    got = []
    for _ in range(rounds):
        for records in (await reader.getmany(timeout_ms=10)).values():
            got += [(r.partition, r.offset) for r in records]
    return sorted(got)


# -- one record never stops a reader ------------------------------------------------------------------

HOSTILE = {
    "null header values": record("j", headers=[("traceparent", None), ("tracestate", None), ("baggage", None)]),
    "header values not UTF-8": record("j", headers=[("traceparent", b"\xff\xfe"), ("x", b"\x80")]),
    "junk trace context": record("j", headers=[("traceparent", b"00-zz-" + b"f" * 600), ("tracestate", b"\x00" * 5000),
                                               ("baggage", b"=;=,%%%\xff")]),
    "thousands of headers": record("j", headers=[("traceparent", b"x")] * 5000),
}
UNUSABLE = {
    "undecodable body": record("j", value=b"\xc1 not msgpack"),
    "empty body": record("j", value=b""),
    "a job id with a control character": record("a\nb"),
    "a job id of 1000 characters": record("x" * 1000),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_headers_cost_a_result_only_its_trace(name):
    result = _receive(TRACER, HOSTILE[name], MAX_BYTES)
    assert result is not None and result.job_id == "j"


@pytest.mark.parametrize("name", list(UNUSABLE))
def test_a_record_that_is_no_result_is_logged_with_its_coordinates_and_skipped(name, caplog):
    bad = UNUSABLE[name]
    with caplog.at_level(logging.WARNING, "aiaas.client"):
        assert _receive(TRACER, bad, MAX_BYTES) is None
    assert f"{TOPIC}[0] offset {bad.offset}" in caplog.text


async def test_a_record_aiokafka_cannot_parse_is_skipped_and_nothing_else_is_lost(caplog):
    logs = {0: [record(f"a{i}", i) for i in range(5)],
            1: [record("b0", 0, 1), record("b1", 1, 1), Unparseable(), record("b3", 3, 1)]}
    reader = reader_over(FakeConsumer(logs))
    with caplog.at_level(logging.WARNING, "aiaas.client"):
        got = await drain(reader)
    # Partition 0 was drained by the failed call before partition 1 raised: its records come all the same.
    assert got == [(0, i) for i in range(5)] + [(1, 0), (1, 1), (1, 3)]
    assert f"{TOPIC}[1] offset 2" in caplog.text
    assert reader.positions == {TopicPartition(TOPIC, 0): 5, TopicPartition(TOPIC, 1): 4}


async def test_two_unparseable_records_in_a_row_and_in_two_partitions():
    logs = {0: [Unparseable(), record("a1", 1)],
            1: [record("b0", 0, 1), Unparseable(), Unparseable(), record("b3", 3, 1)]}
    assert await drain(reader_over(FakeConsumer(logs))) == [(0, 1), (1, 0), (1, 3)]


async def test_a_group_less_reader_follows_partitions_added_to_its_topic():
    logs = {0: [record("a0", 0), record("a1", 1)]}
    consumer = FakeConsumer(logs)
    reader = reader_over(consumer, at_end=True)  # started at the end: a0 and a1 are old
    logs[0].append(record("a2", 2))
    assert await drain(reader) == [(0, 2)]
    logs[1] = [record("b0", 0, 1), record("b1", 1, 1)]  # the topic grows; results land on the new partition
    consumer.partitions = 2
    logs[0].append(record("a3", 3))
    assert await drain(reader) == [(0, 3), (1, 0), (1, 1)]  # the new one from its beginning; the old one goes on


# -- the request/reply listener ---------------------------------------------------------------------


class Broker:
    """Shared partitions; `open` starts a reader on them as `_start_reader` would (at the end, or at `positions`)."""

    def __init__(self, partitions: int = 1, *, fail_first: list[BaseException] | None = None) -> None:
        self.logs: dict[int, list] = {p: [] for p in range(partitions)}
        self.opened: list[tuple[FakeConsumer, dict | None]] = []
        self._failures = list(fail_first or [])

    async def open(self, positions):
        consumer = FakeConsumer(self.logs, fail_first=self._failures.pop(0) if self._failures else None)
        tps = [TopicPartition(TOPIC, p) for p in self.logs]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, (positions or {}).get(tp, len(self.logs[tp.partition])))
        self.opened.append((consumer, None if positions is None else dict(positions)))
        return _Reader(consumer, TOPIC, follow=True, positions={tp: consumer.at[tp] for tp in tps}, follow_every_s=0)

    def publish(self, rec: ConsumerRecord | Unparseable, partition: int = 0) -> None:
        log = self.logs[partition]
        if isinstance(rec, ConsumerRecord):
            rec = ConsumerRecord(TOPIC, partition, len(log), 0, 0, rec.key, rec.value, None, 0, 0, rec.headers)
        log.append(rec)


async def listening(broker: Broker) -> _ResultListener:
    listener = _ResultListener(KafkaSettings(), TOPIC, open_reader=broker.open)
    await listener.open()
    return listener


async def statuses(waiting: JobHandle) -> list[str]:
    return [r.status async for r in waiting.events(timeout=5)]


def handle(listener: _ResultListener, job_id: str) -> JobHandle:
    future, progress = listener.expect(job_id)
    return JobHandle(Job(job_id=job_id, model="vision", inputs={}), 0.0, 0, 0, future, progress, _listener=listener)


async def test_the_listener_survives_bad_records_and_answers_the_next_one(caplog):
    broker = Broker()
    listener = await listening(broker)
    try:
        waiting = handle(listener, "j1")
        with caplog.at_level(logging.WARNING, "aiaas.client"):
            for unusable in UNUSABLE.values():  # keyed by the job id it waits for, but no result of it
                broker.publish(record("j1", value=unusable.value))
            for hostile in HOSTILE.values():  # progress events with hostile headers: delivered, untraced
                broker.publish(record("j1", status="running", headers=hostile.headers))
            broker.publish(Unparseable())
            broker.publish(record("other", key=b"\xff\xfe not a job id"))
            broker.publish(record("j1"))
            events = await statuses(waiting)
        assert events == ["running"] * len(HOSTILE) + ["ok"]
        assert listener.restarts == 0 and listener.waiting == 0
        assert f"{TOPIC}[0] offset {len(UNUSABLE) + len(HOSTILE)}: the Kafka client cannot parse it" in caplog.text
        assert caplog.text.count("not a result this client can use") == len(UNUSABLE)
    finally:
        await listener.stop()


async def test_the_listener_restarts_after_an_error_and_the_handles_keep_waiting(caplog):
    broker = Broker(fail_first=[RuntimeError("broker gone"), RuntimeError("still gone")])
    with caplog.at_level(logging.ERROR, "aiaas.client"):
        listener = await listening(broker)
        try:
            waiting = handle(listener, "j1")
            broker.publish(record("j1"))
            assert (await waiting.result(timeout=5)).job_id == "j1"
        finally:
            await listener.stop()
    assert listener.restarts == 2
    assert "result listener on p.vision.results failed (RuntimeError: broker gone)" in caplog.text
    # The fresh consumers started where the failed ones were: nothing published meanwhile was skipped.
    assert [positions for _, positions in broker.opened] == [None, {TopicPartition(TOPIC, 0): 0},
                                                               {TopicPartition(TOPIC, 0): 0}]
    assert all(consumer.stopped for consumer, _ in broker.opened[:2])


async def test_a_timed_out_handle_is_forgotten_and_can_wait_again():
    broker = Broker()
    listener = await listening(broker)
    try:
        waiting = handle(listener, "j1")
        with pytest.raises(TimeoutError, match="no result for job j1 within 0.05s"):
            await waiting.result(timeout=0.05)
        assert listener.waiting == 0  # nothing kept for it
        again = asyncio.create_task(waiting.result(timeout=5))
        await asyncio.sleep(0.05)
        assert listener.waiting == 1
        broker.publish(record("j1"))
        assert (await again).job_id == "j1" and listener.waiting == 0
    finally:
        await listener.stop()


async def test_many_timed_out_handles_leave_nothing_behind():
    listener = await listening(Broker())
    try:
        handles = [handle(listener, f"j{i}") for i in range(200)]
        await asyncio.gather(*(h.result(timeout=0.01) for h in handles), return_exceptions=True)
        assert listener.waiting == 0
    finally:
        await listener.stop()


async def test_an_events_timeout_forgets_the_handle_too():
    listener = await listening(Broker())
    try:
        waiting = handle(listener, "t1")
        with pytest.raises(TimeoutError, match="no event for job t1"):
            async for _ in waiting.events(timeout=0.05):
                pass
        assert listener.waiting == 0
    finally:
        await listener.stop()


async def test_two_handles_for_one_job_id_both_complete_and_both_see_progress():
    broker = Broker()
    listener = await listening(broker)
    try:
        first, second = handle(listener, "j1"), handle(listener, "j1")
        broker.publish(record("j1", status="running"))
        broker.publish(record("j1"))
        both = await asyncio.gather(statuses(first), statuses(second))
        assert both == [["running", "ok"], ["running", "ok"]]
        assert listener.waiting == 0
    finally:
        await listener.stop()


async def test_one_of_two_handles_timing_out_leaves_the_other_waiting():
    broker = Broker()
    listener = await listening(broker)
    try:
        first, second = handle(listener, "j1"), handle(listener, "j1")
        with pytest.raises(TimeoutError):
            await first.result(timeout=0.02)
        assert listener.waiting == 1
        broker.publish(record("j1"))
        assert (await second.result(timeout=5)).status == "ok"
    finally:
        await listener.stop()


async def test_the_listener_reads_partitions_added_after_it_started():
    broker = Broker(partitions=1)
    listener = await listening(broker)
    try:
        waiting = handle(listener, "j1")
        broker.logs[1] = []
        broker.opened[0][0].partitions = 2
        broker.publish(record("j1"), partition=1)
        assert (await waiting.result(timeout=5)).job_id == "j1"
    finally:
        await listener.stop()


def test_a_result_continues_the_trace_its_headers_carry_and_junk_ones_only_lose_it(spans):
    with TRACER.start_as_current_span("send") as send:
        headers = inject_headers()
    assert _receive(TRACER, record("j", headers=headers), MAX_BYTES).job_id == "j"
    assert _receive(TRACER, HOSTILE["junk trace context"], MAX_BYTES).job_id == "j"
    traced, untraced = [s for s in spans.get_finished_spans() if s.name == f"process {TOPIC}"]
    assert traced.parent.span_id == send.get_span_context().span_id
    assert untraced.parent is None and untraced.attributes["aiaas.job.id"] == "j"
