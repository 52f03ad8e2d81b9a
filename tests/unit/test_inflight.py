"""The in-flight window: safe commit offsets, and its two bounds (records and bytes)."""

import asyncio

import numpy as np
import pytest

from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.commit_window import InFlightWindow, Partition
from aiaas.serving.pipeline import JobPipeline
from aiaas.serving.worker import BatchWorker
from tests.fakes import FakeConsumer, Record, RecordingSink, SumRuntime
from tests.unit.test_pipeline import run_until

TOPICS = ModelTopics.of("vision", "p")


def sized(offsets, size: int, partition: int = 0) -> list[Record]:
    """Records of `size` bytes each (a 4-byte key and the rest value)."""
    return [Record(TOPICS.infer, partition, offset, b"k%03d" % offset, b"v" * (size - 4)) for offset in offsets]


def test_commit_offsets_stop_at_the_first_record_not_done():
    window = InFlightWindow(10)
    records = sized(range(4), 10)
    window.take(records)
    assert window.finish([records[1], records[2]]) == {}
    assert window.finish([records[0]]) == {Partition(TOPICS.infer, 0): 3}
    assert window.first_pending() == {Partition(TOPICS.infer, 0): 3}


def test_the_record_bound_alone_is_what_it_was():
    window = InFlightWindow(3)
    window.take(sized(range(3), 1000))
    assert window.room == 0 and window.full and window.bytes == 3000


def test_the_byte_budget_fills_the_window_before_the_record_bound():
    window = InFlightWindow(100, max_bytes=1000)
    assert window.room == 1  # no size seen yet: one record, then the estimate knows better
    records = sized(range(10), 100)
    window.take(records[:1])
    assert window.room == 9  # what is left of the budget, at the records' size
    window.take(records[1:])
    assert window.bytes == 1000 and window.room == 0 and window.full
    window.finish(records[:2])
    assert window.bytes == 800 and window.room == 2
    window.take(sized([10], 150))
    assert window.bytes == 950 and window.room == 0  # 50 bytes left: less than a record, so none is asked for


def test_a_record_larger_than_the_whole_budget_is_still_taken_when_nothing_else_is_in_flight():
    window = InFlightWindow(100, max_bytes=50)
    big = sized([0, 1], 400)
    window.take(big[:1])
    assert window.room == 0
    window.finish(big[:1])
    assert window.bytes == 0 and window.room == 1  # empty again: the next big record may come in


def test_forgetting_partitions_gives_their_bytes_back():
    window = InFlightWindow(100, max_bytes=1000)
    window.take(sized(range(5), 100, partition=0) + sized(range(5), 100, partition=1))
    window.forget([Partition(TOPICS.infer, 0)])
    assert window.bytes == 500 and len(window) == 5
    window.finish(sized(range(5), 100, partition=0))  # forgotten records finishing late change nothing
    assert window.bytes == 500
    window.forget(None)
    assert window.bytes == 0 and window.room > 0


def test_records_taken_again_are_counted_once():
    window = InFlightWindow(100, max_bytes=1000)
    records = sized(range(3), 100)
    window.take(records)
    window.take(records)  # a redelivery without a forget
    assert window.bytes == 300


def test_a_byte_budget_must_be_positive():
    with pytest.raises(ValueError):
        InFlightWindow(10, max_bytes=0)


def big_jobs(n: int, floats: int) -> list[Record]:
    records = []
    for offset in range(n):
        job = Job(job_id=f"job-{offset}", model="vision",
                  inputs={"x": Tensor.from_numpy(np.full(floats, offset, dtype=np.float32))})
        records.append(Record(TOPICS.infer, 0, offset, job.job_id.encode(), encode(job)))
    return records


async def test_the_pipeline_holds_no_more_bytes_in_flight_than_its_budget():
    records = big_jobs(60, 2500)  # ~10 KB each
    size = len(records[0].value) + len(records[0].key)
    budget = 3 * size + size // 2

    class CountingConsumer(FakeConsumer):
        handed = 0

        async def getmany(self, timeout_ms=0, max_records=None):
            out = await super().getmany(timeout_ms=timeout_ms, max_records=max_records)
            self.handed += sum(len(r.value) + len(r.key) for part in out.values() for r in part)
            return out

    consumer = CountingConsumer({0: records})
    most = 0

    class ProbeSink(RecordingSink):
        async def send(self, topic, value, *, key, headers):
            nonlocal most
            answered_bytes = len(self.sent) * size  # every job is the same size
            most = max(most, consumer.handed - answered_bytes)
            await asyncio.sleep(0.002)
            await super().send(topic, value, key=key, headers=headers)

    sink = ProbeSink()
    worker = BatchWorker(SumRuntime(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=100,
                           max_in_flight_bytes=budget, drain_timeout_s=10)
    stats = await run_until(pipeline, lambda: len(sink.on(TOPICS.results)) == 60)
    assert {decode_result(v, 1 << 20).job_id for _, v, _, _ in sink.on(TOPICS.results)} == {
        f"job-{i}" for i in range(60)}
    assert most <= budget  # 3 jobs at a time, never the 100 the record bound allows
    assert stats.pauses > 0 and consumer.last_commits() == {0: 60}


def test_the_window_counts_urgent_records_until_they_are_done_forgotten_or_taken_again():
    window = InFlightWindow(16, is_urgent=TOPICS.is_urgent)
    lane = [Record(TOPICS.urgent, 0, offset, b"k", b"v") for offset in range(3)]
    window.take(lane + sized([0, 1], 8))
    assert window.urgent == 3 and len(window) == 5
    window.take(lane[:1])  # delivered again after a rewind: counted once
    assert window.urgent == 3
    window.finish(lane[:2])
    assert window.urgent == 1
    window.forget([Partition(TOPICS.urgent, 0)])
    assert window.urgent == 0 and len(window) == 2
