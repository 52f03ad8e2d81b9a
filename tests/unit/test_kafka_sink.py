"""KafkaSink.send_many against a fake producer: grouping, per-record errors, refusals pinned on their record."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from aiaas.kafka.sink import KafkaSink, murmur2


@dataclass
class Record:
    topic: str
    value: bytes
    key: bytes | None
    headers: list = field(default_factory=list)


class FakeBatch:
    def __init__(self, room: int) -> None:
        self.records, self.room, self.closed = [], room, False

    def append(self, *, key, value, timestamp, headers):
        if self.closed or (self.records and len(self.records) >= self.room):
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Three partitions per known topic; a value over 100 bytes is too large for the broker."""

    def __init__(self, topics=("r", "d"), room: int = 4) -> None:
        self.topics, self.room = set(topics), room
        self.batches: list[tuple[str, int, list]] = []
        self.lookups: list[str] = []

    async def partitions_for(self, topic):
        self.lookups.append(topic)
        if topic not in self.topics:
            await asyncio.sleep(0.01)
            raise KafkaTimeoutError(f"no metadata for {topic}")
        return {0, 1, 2}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.room)

    async def send_batch(self, batch, topic, *, partition):
        assert batch.closed, "a batch is closed before it is submitted"
        self.batches.append((topic, partition, list(batch.records)))
        future = asyncio.get_running_loop().create_future()
        if any(len(value) > 100 for _, value in batch.records):
            future.set_exception(MessageSizeTooLargeError())
        else:
            future.set_result(None)
        return future

    async def send(self, topic, value, *, key, headers):
        future = asyncio.get_running_loop().create_future()
        future.set_exception(MessageSizeTooLargeError()) if len(value) > 100 else future.set_result(None)
        return future


async def test_records_are_grouped_per_partition_as_the_default_partitioner_places_them():
    producer = FakeProducer(room=1000)
    records = [Record("r", b"v", os.urandom(16).hex().encode()) for _ in range(50)]
    assert await KafkaSink(producer).send_many(records) == [None] * 50
    placed = {key: (topic, partition) for topic, partition, batch in producer.batches for key, _ in batch}
    for record in records:
        assert placed[record.key] == ("r", DefaultPartitioner()(record.key, [0, 1, 2], [0, 1, 2]))
    assert len(producer.batches) <= 3 and producer.lookups == ["r"]


def test_murmur2_is_the_java_clients_hash():
    from aiokafka.partitioner import murmur2 as reference

    for length in range(0, 70):
        for _ in range(20):
            key = os.urandom(length)
            assert murmur2(key) == reference(key) & 0xFFFFFFFF


async def test_a_full_batch_continues_in_the_next_one_in_order():
    producer = FakeProducer(room=4)
    records = [Record("r", bytes([i]), b"same-key") for i in range(10)]
    assert await KafkaSink(producer).send_many(records) == [None] * 10
    sent = [value for _, _, batch in producer.batches for _, value in batch]
    assert sent == [bytes([i]) for i in range(10)] and [len(b) for _, _, b in producer.batches] == [4, 4, 2]


async def test_a_missing_topic_fails_its_records_once_and_holds_no_other_topic_up():
    producer = FakeProducer()
    records = [Record("missing", b"x", f"k{i}".encode()) for i in range(20)] + [Record("r", b"y", b"k")]
    errors = await KafkaSink(producer).send_many(records)
    assert all(isinstance(e, KafkaTimeoutError) for e in errors[:20]) and errors[20] is None
    assert producer.lookups.count("missing") == 1


async def test_a_refusal_for_good_is_pinned_on_the_record_that_caused_it():
    producer = FakeProducer(room=1000)
    records = [Record("d", b"small", b"key")] * 3 + [Record("d", b"x" * 500, b"key")] + [Record("d", b"ok", b"key")]
    errors = await KafkaSink(producer).send_many(records)
    assert [type(e).__name__ if e else None for e in errors] == [None, None, None, "MessageSizeTooLargeError", None]
