"""Exactly-once mode: consume → infer → produce in one Kafka transaction per batch.

Each batch's results, dead letters and retry records, and the consumer offsets the batch
makes safe, are written in one transaction (`send_offsets_to_transaction`). Readers that use
`read_committed` (the aiaas client always does) see a batch's results only once its offsets
are committed with them, so a crash at any point either shows the whole batch once or
nothing of it — and then the jobs run again and their results are committed once.

Transactions run one at a time on the service's single transactional producer, in batch
order; the next batch can still be in the model meanwhile. The transactional id is
`<group>.<instance_id>`: a restarted replica with the same instance id fences its
predecessor (its zombie's transaction is aborted and its producer can no longer write).

A limit to know: aiokafka's `send_offsets_to_transaction` does not send the consumer
group's generation (KIP-447), so fencing is by transactional id only. A replica that stalls
past its rebalance timeout and wakes up after its partitions moved could still commit one
transaction; give every replica a stable, distinct instance id (a StatefulSet ordinal, say)
so a restart fences it, and keep `graceful_timeout_s` (which sizes the rebalance timeout) above
the longest batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced, TransactionalIdAuthorizationFailed

from .inflight import Partition

__all__ = ["Transactions", "TransactionFenced", "TransactionalProducer", "transactional_id"]

log = logging.getLogger("aiaas.exactly_once")

_FATAL = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)


def transactional_id(group: str, instance_id: str) -> str:
    """The transactional id of one replica of a service."""
    return f"{group}.{instance_id}"


class TransactionFenced(Exception):
    """Another producer with our transactional id took over (or the broker refused us): stop serving."""


class TransactionalProducer(Protocol):
    """The parts of aiokafka's AIOKafkaProducer (with a transactional_id) used here."""

    async def begin_transaction(self) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...
    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None: ...


class Transactions:
    """One transaction per batch, one after another, committing the batch's offsets with its outputs."""

    def __init__(self, producer: TransactionalProducer, group_id: str) -> None:
        self._producer = producer
        self._group = group_id
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def batch(self) -> AsyncIterator["Transactions"]:
        """Begin a transaction; commit it when the block ends, abort it if the block raises."""
        async with self._lock:
            await self._call(self._producer.begin_transaction)
            try:
                yield self
            except BaseException:
                await self._abort()
                raise
            await self._call(self._producer.commit_transaction)

    async def commit_offsets(self, offsets: dict[Partition, int]) -> None:
        """Add consumer offsets (next offset to read, per partition) to the open transaction."""
        if offsets:
            committed = {TopicPartition(*partition): offset for partition, offset in offsets.items()}
            await self._call(self._producer.send_offsets_to_transaction, committed, self._group)

    async def _abort(self) -> None:
        try:
            await self._call(self._producer.abort_transaction)
        except TransactionFenced:
            raise
        except Exception as exc:  # a producer that can neither commit nor abort cannot go on
            raise TransactionFenced(f"aborting a transaction failed: {exc}") from exc

    async def _call(self, method: Any, *args: Any) -> Any:
        try:
            return await method(*args)
        except _FATAL as exc:
            raise TransactionFenced(
                f"{type(exc).__name__}: another replica with the same transactional id took over, or the broker "
                "refused this producer"
            ) from exc
