"""Idempotency: a job id seen again gets the outcome it already had, not a second, different one.

A job id can reach a service twice: a producer that retried, a user who re-published, or a
replay after a crash (the job's result was sent but its offset not yet committed). Between
the two, the served model version may have changed, so running the model again could give a
different answer. The service therefore remembers the encoded outcome of its most recent
jobs and answers a repeated id with the very same bytes (and the same dead letter, if it had
one). At start it seeds that memory from the tail of its results topic (read_committed), so a
replay after a crash or restart is covered too.

The memory is bounded twice: at most `idempotency_window` outcomes and at most
`outcome_memory_bytes` of them (payloads plus a fixed allowance per entry), whichever is
reached first, so a service whose results are large (long texts) cannot grow without bound.
An outcome larger than the whole byte budget is not remembered: a repeat of that job runs again.

Memory is per tenant: an outcome is stored under (tenant, job id), and a job id reused by
another tenant is a different job, so it never gets the first tenant's outcome. The tenant is
whatever the caller trusts (the topic a job arrived on), never a field of the job itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace

import msgpack
from aiokafka import AIOKafkaConsumer, TopicPartition

from aiaas.errors import AiaasError
from aiaas.kafka.admin import partition_count
from aiaas.settings import KafkaSettings

__all__ = ["Outcome", "OutcomeCache", "seed_from_results"]

log = logging.getLogger("aiaas.idempotency")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a job got: its encoded result on `topic`, and the error that dead-lettered it, if any.

    For the retry topic's sake (`BatchWorker._replay`): `source` is the retry record (topic, partition, offset) whose
    run computed it, None for anything else (an infer record's run, or read back from the results topic);
    `delivered`, once such an outcome is known to be on its topic (acknowledged, or committed in a transaction).
    """

    topic: str
    payload: bytes
    error: AiaasError | None = None
    delivered: bool = False
    source: tuple[str, int, int] | None = None


_ENTRY_OVERHEAD = 300
"""Bytes charged per remembered outcome besides its payload and ids: the dict entry, the key tuple, the
Outcome and the bytes and str headers (measured with tracemalloc in tests/unit/test_idempotency.py)."""


class OutcomeCache:
    """The outcomes of the most recent job ids, per tenant: at most `capacity` of them and, when `max_bytes` is
    set, at most that many bytes (least recently stored are dropped first)."""

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._outcomes: OrderedDict[tuple[str | None, str], Outcome] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def memory_bytes(self) -> int:
        """The bytes charged for what is remembered now (payloads, ids and a fixed allowance per entry)."""
        return self._bytes

    def get(self, job_id: str, tenant: str | None = None) -> Outcome | None:
        """The remembered outcome of `tenant`'s job `job_id`, if any."""
        outcome = self._outcomes.get((tenant, job_id))
        if outcome is not None:
            self.hits += 1
        return outcome

    def put(self, job_id: str, outcome: Outcome, tenant: str | None = None) -> None:
        """Remember (or refresh) `tenant`'s job `job_id`'s outcome, forgetting the oldest past either bound."""
        if self.capacity <= 0:
            return
        key = (tenant, job_id)
        self._drop(key)
        cost = _cost(key, outcome)
        if self.max_bytes is not None and cost > self.max_bytes:
            return  # keeping it would mean forgetting everything else; a repeat of this one job runs again
        self._outcomes[key] = outcome
        self._bytes += cost
        while len(self._outcomes) > self.capacity or (self.max_bytes is not None and self._bytes > self.max_bytes):
            self._drop(next(iter(self._outcomes)))

    def confirm(self, job_id: str, outcome: Outcome, tenant: str | None = None) -> None:
        """`outcome` (as it was put) is on its topic now; nothing when it was replaced or forgotten since."""
        key = (tenant, job_id)
        if self._outcomes.get(key) is outcome:
            self._outcomes[key] = replace(outcome, delivered=True)  # same size: the byte count stands

    def _drop(self, key: tuple[str | None, str]) -> None:
        outcome = self._outcomes.pop(key, None)
        if outcome is not None:
            self._bytes -= _cost(key, outcome)


def _cost(key: tuple[str | None, str], outcome: Outcome) -> int:
    tenant, job_id = key
    return len(outcome.payload) + len(job_id) + len(tenant or "") + _ENTRY_OVERHEAD


async def seed_from_results(
    cache: OutcomeCache, kafka: KafkaSettings, topic: str, tenant: str | None = None
) -> int:
    """Fill `cache` from the last records of every partition of `topic`; returns how many were read.

    What is read is remembered as `tenant`'s: the tenant whose results `topic` holds (None for the
    results topic of a service without tenants), never a field of the records. Only committed
    records are read, so in exactly-once mode the results of aborted transactions are not
    remembered. Errors are remembered as results only: their dead letter was already written
    when the result was.
    """
    if cache.capacity <= 0:
        return 0
    count = await partition_count(kafka, topic)
    if not count:
        return 0
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed",
                                max_partition_fetch_bytes=kafka.max_batch_bytes)
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
                    _remember(cache, topic, record.value, tenant)
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return read
    finally:
        await asyncio.sleep(0)  # let the consumer's own start-up task run first: stopping before it did raises
        await consumer.stop()


_INFERENCE_OUTCOMES = frozenset({"ok", "error", "expired"})


def _remember(cache: OutcomeCache, topic: str, value: bytes | None, tenant: str | None) -> None:
    """Remember an inference result's bytes under its job id (training events are not outcomes of this kind)."""
    try:
        envelope = msgpack.unpackb(value or b"", raw=False)
        job_id, status = envelope["job_id"], envelope["status"]
    except Exception:  # a record we cannot read tells us nothing
        return
    if isinstance(job_id, str) and status in _INFERENCE_OUTCOMES:
        cache.put(job_id, Outcome(topic, value or b"", delivered=True), tenant)  # read from the topic: it is there
