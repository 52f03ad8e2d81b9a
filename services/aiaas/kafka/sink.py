"""Where a service's outcomes leave for Kafka: a batch of records in one producer batch per partition.

`AIOKafkaProducer.send` costs one partitioner call, one future, one accumulator wait and one
task wake-up per record; for a worker that publishes a whole batch of results at once that
was a noticeable share of its time (bench/hotpath.py). `KafkaSink.send_many` hashes each key to its
partition exactly as the producers' default partitioner does (murmur2, as the Java client),
fills one `BatchBuilder` per partition and submits it with `send_batch`: one future per
partition. The producer's guarantees stay: idempotence (sequence numbers are given per batch),
`acks=all`, and in exactly-once mode the batch joins the open transaction.

A batch the broker refuses for good (a record too large, a topic it will never accept) is
sent again record by record, so the refusal is pinned on the record that caused it and its
batch-mates are not dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

__all__ = ["KafkaSink", "OutgoingRecord", "refused_for_good", "murmur2", "partition_for"]

_REFUSED_FOR_GOOD = (MessageSizeTooLargeError, RecordTooLargeError, InvalidTopicError, TopicAuthorizationFailedError,
                     CorruptRecordException)
"""Broker answers that will not change if the same record is sent again."""


def refused_for_good(exc: BaseException) -> bool:
    """True when sending the same outcome again cannot work: a permanent broker refusal, or a client-side bug
    (not a Kafka or network error). Timeouts and lost connections are transient: the broker may come back."""
    if isinstance(exc, _REFUSED_FOR_GOOD):
        return True
    return not isinstance(exc, (KafkaError, OSError, TimeoutError, asyncio.CancelledError))


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a key (the Java client's `Utils.murmur2`, as an unsigned 32-bit int).

    The same function as aiokafka's, faster: the words are read in one `struct` call, not assembled byte by byte.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        end = words * 4
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes | None, partitions: Sequence[int]) -> int:
    """The partition the Kafka producers' default partitioner picks for `key` among sorted `partitions`."""
    if key is None:
        return random.choice(partitions)
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class OutgoingRecord(Protocol):
    """What `send_many` reads of a record."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


_Sent = asyncio.Future[Any] | BaseException
"""A batch handed to the producer: the future of its delivery, or the error that kept it from being taken."""


class KafkaSink:
    """ResultSink over an idempotent, acks=all (or transactional) producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Publish one record and await the broker's acknowledgement."""
        delivery = await self._producer.send(topic, value, key=key, headers=headers)
        await delivery

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[BaseException | None]:
        """Publish every record; per record, None once acknowledged or the error that stopped it."""
        errors: list[BaseException | None] = [None] * len(records)
        topics = list(dict.fromkeys(record.topic for record in records))
        # Each topic's partitions once, all topics at once: a topic that does not exist (a job's reply_to)
        # costs one metadata timeout for its records, not one per record, and holds no other topic up.
        found = await asyncio.gather(*(self._producer.partitions_for(topic) for topic in topics),
                                     return_exceptions=True)
        partitions = {topic: sorted(p) if not isinstance(p, BaseException) else p
                      for topic, p in zip(topics, found, strict=True)}
        by_partition: dict[tuple[str, int], list[int]] = {}
        for i, record in enumerate(records):
            known = partitions[record.topic]
            if isinstance(known, BaseException) or not known:
                errors[i] = known if isinstance(known, BaseException) else UnknownTopicOrPartitionError(record.topic)
                continue
            by_partition.setdefault((record.topic, partition_for(record.key, known)), []).append(i)

        async def submit(topic: str, partition: int, indices: list[int]) -> list[tuple[_Sent, list[int]]]:
            """One partition's batches, in order (a partition takes one batch at a time)."""
            done: list[tuple[_Sent, list[int]]] = []
            members: list[int] = []
            batch = self._producer.create_batch()
            for i in indices:
                record = records[i]
                if batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
                    done.append((await self._submit(batch, topic, partition), members))
                    batch, members = self._producer.create_batch(), []
                    batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers)
                members.append(i)  # the first record of a batch always fits
            done.append((await self._submit(batch, topic, partition), members))
            return done

        # The partitions at once: one that still has a batch in flight does not hold the others up.
        per_partition = await asyncio.gather(*(submit(topic, partition, indices)
                                               for (topic, partition), indices in by_partition.items()))
        submitted = [entry for entries in per_partition for entry in entries]
        answers = await asyncio.gather(*(_settled(sent) for sent, _ in submitted))
        alone: list[int] = []
        for (_, members), answer in zip(submitted, answers, strict=True):
            if answer is None:
                continue
            if len(members) > 1 and refused_for_good(answer):
                alone += members  # find the record the broker refuses; its batch-mates go through
            else:
                for i in members:
                    errors[i] = answer
        for i in alone:
            record = records[i]
            try:
                await self.send(record.topic, record.value, key=record.key, headers=record.headers)
            except Exception as exc:  # noqa: BLE001 - reported per record
                errors[i] = exc
        return errors

    async def _submit(self, batch: Any, topic: str, partition: int) -> _Sent:
        """Hand a closed `BatchBuilder` to the producer: the future of its delivery, or why it was not taken."""
        batch.close()  # nothing else may join it: its records are exactly `members`
        try:
            delivery: asyncio.Future[Any] = await self._producer.send_batch(batch, topic, partition=partition)
            return delivery
        except Exception as exc:  # noqa: BLE001 - e.g. the accumulator stayed full: the batch failed
            return exc


async def _settled(sent: _Sent) -> BaseException | None:
    if isinstance(sent, BaseException):
        return sent
    try:
        await sent
    except Exception as exc:  # noqa: BLE001 - the batch's error, reported for each of its records
        return exc
    return None
