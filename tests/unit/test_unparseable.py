"""Finding and stepping over a record the Kafka client cannot parse (shared by the pipeline and the trainer)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaTimeoutError,
)

from aiaas.kafka.unparseable import UnparseableSearch, UnreadableRecord, is_unparseable
from tests.fakes import FakeConsumer, job_record

TOPIC = "p.vision.infer"


@pytest.mark.parametrize("error, unparseable", [
    (CorruptRecordException(), True),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), True),
    (KafkaConnectionError(), False),
    (KafkaTimeoutError(), False),
])
def test_only_a_records_fault_counts_as_unparseable(error, unparseable):
    assert is_unparseable(error) is unparseable


async def test_the_search_puts_partitions_back_reads_up_to_the_record_and_resumes_after_it():
    consumer = FakeConsumer({p: [job_record(o, [o]) for o in range(6)] for p in (0, 1)})
    consumer.unparseable = {(1, 2)}
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.offsets[p0] = 5  # the failed call drained records 3 and 4 of partition 0 without returning them
    search = UnparseableSearch(consumer, max_steps=16)
    found = await search.step_over(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"), {p0: 3})
    assert [r.offset for r in found[p0]] == [3, 4, 5]
    assert [r.offset for r in found[p1][:-1]] == [0, 1]  # nothing committed: partition 1 starts at its beginning
    assert found[p1][-1] == UnreadableRecord(TOPIC, 1, 2, found[p1][-1].unreadable)
    assert found[p1][-1].unreadable.startswith("UnicodeDecodeError")
    assert consumer.offsets[p1] == 3  # reading resumes after it
