"""Idempotency: a job id seen again gets the outcome it already had, not a second, different one.

A job id can reach a service twice: a producer that retried, a user who re-published, or a
replay after a crash (the job's result was sent but its offset not yet committed). Between
the two, the served model version may have changed, so running the model again could give a
different answer. The service therefore remembers the encoded outcome of the last
`idempotency_window` jobs and answers a repeated id with the very same bytes (and the same
dead letter, if it had one). At start it seeds that memory from the tail of its results
topic (read_committed), so a replay after a crash or restart is covered too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

import msgpack
from aiokafka import AIOKafkaConsumer, TopicPartition

from .errors import AiaasError
from .settings import KafkaSettings
from .topics import partition_count

__all__ = ["Outcome", "OutcomeCache", "seed_from_results"]

log = logging.getLogger("aiaas.idempotency")


@dataclass(frozen=True)
class Outcome:
    """What a job got: its encoded result on `topic`, and the error that dead-lettered it, if any."""

    topic: str
    payload: bytes
    error: AiaasError | None = None


class OutcomeCache:
    """The outcomes of the most recent `capacity` job ids (least recently stored are dropped first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._outcomes)

    def get(self, job_id: str) -> Outcome | None:
        """The remembered outcome of `job_id`, if any."""
        outcome = self._outcomes.get(job_id)
        if outcome is not None:
            self.hits += 1
        return outcome

    def put(self, job_id: str, outcome: Outcome) -> None:
        """Remember (or refresh) `job_id`'s outcome."""
        if self.capacity <= 0:
            return
        self._outcomes[job_id] = outcome
        self._outcomes.move_to_end(job_id)
        while len(self._outcomes) > self.capacity:
            self._outcomes.popitem(last=False)


async def seed_from_results(cache: OutcomeCache, kafka: KafkaSettings, topic: str) -> int:
    """Fill `cache` from the last records of every partition of `topic`; returns how many were read.

    Only committed records are read, so in exactly-once mode the results of aborted
    transactions are not remembered. Errors are remembered as results only: their dead letter
    was already written when the result was.
    """
    if cache.capacity <= 0:
        return 0
    count = await partition_count(kafka, topic)
    if not count:
        return 0
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed",
                                max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        per_partition = max(1, cache.capacity // len(partitions))
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - per_partition))
        remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
        read = 0
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    read += 1
                    _remember(cache, topic, record.value)
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return read
    finally:
        await asyncio.sleep(0)  # let the consumer's own start-up task run first: stopping before it did raises
        await consumer.stop()


_INFERENCE_OUTCOMES = frozenset({"ok", "error", "expired"})


def _remember(cache: OutcomeCache, topic: str, value: bytes | None) -> None:
    """Remember an inference result's bytes under its job id (training events are not outcomes of this kind)."""
    try:
        envelope = msgpack.unpackb(value or b"", raw=False)
        job_id, status = envelope["job_id"], envelope["status"]
    except Exception:  # a record we cannot read tells us nothing
        return
    if isinstance(job_id, str) and status in _INFERENCE_OUTCOMES:
        cache.put(job_id, Outcome(topic, value or b""))
