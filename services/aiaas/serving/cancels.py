"""Cancellations: job ids on a streaming model type's cancel topics end those jobs' generation now.

Every replica reads every cancel topic (`<prefix>.<model>.cancel` and each tenant's `.cancel.<tenant>`) from its
end, in a consumer group of its own (a job runs on one replica, and a publisher cannot know which), and hands
each job id to the worker, which ends the generation only when the job is running here and came from the same
tenant's topics. A record that is not a job id is skipped, and one the Kafka client cannot even parse is stepped
over (`UnparseableSearch`). The record's value is not read: the key says it all.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from aiaas.contract.envelopes import job_id_of_key
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.unparseable import UnparseableSearch, UnreadableRecord, is_unparseable
from aiaas.settings import KafkaSettings

__all__ = ["CancelListener"]

log = logging.getLogger("aiaas.cancels")

_MAX_STEPS = 500
"""The most records one search for an unreadable record steps through, per partition."""


class CancelListener:
    """Follows a model type's cancel topics; `cancel(job_id, tenant) -> bool` for each record."""

    def __init__(self, kafka: KafkaSettings, topics: ModelTopics, group: str,
                 cancel: Callable[[str, str | None], bool]) -> None:
        self._kafka, self._topics, self._cancel = kafka, topics, cancel
        self._group = f"{group}.cancel.{uuid.uuid4().hex[:12]}"
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.cancelled = 0

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **self._kafka.connection_kwargs(), group_id=self._group, enable_auto_commit=False,
            auto_offset_reset="latest", metadata_max_age_ms=5000, fetch_max_wait_ms=100)
        await self._consumer.start()
        self._consumer.subscribe(pattern=self._topics.cancel_pattern(), listener=_KeepPlace(self._consumer))
        self._task = asyncio.create_task(self._follow(), name="aiaas-cancels")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        search = UnparseableSearch(consumer, max_steps=_MAX_STEPS, logger=log)
        next_offset: dict[TopicPartition, int] = {}
        while True:
            try:
                for tp in consumer.assignment():  # where each partition stands, before anything is read from it
                    if tp not in next_offset:
                        next_offset[tp] = await consumer.position(tp)
                batches = await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad record or a broker hiccup never stops the listener
                if is_unparseable(exc):
                    batches = await search.step_over(exc, next_offset)  # the unreadable record is skipped
                else:
                    log.warning("reading cancellations failed (%s); going on", exc)
                    await asyncio.sleep(1)
                    continue
            for tp, records in batches.items():
                for record in records:
                    next_offset[tp] = record.offset + 1
                    if not isinstance(record, UnreadableRecord):
                        self._handle(record.topic, record.key)

    def _handle(self, topic: str, key: bytes | None) -> None:
        try:
            self._cancel_one(topic, key)
        except Exception:  # noqa: BLE001 - one record never stops the listener
            log.exception("a cancellation on %s could not be handled", topic)

    def _cancel_one(self, topic: str, key: bytes | None) -> None:
        job_id = job_id_of_key(key)
        if job_id is None:
            return
        try:
            tenant = self._topics.cancel_tenant_of(topic)
        except ValueError:
            return
        if self._cancel(job_id, tenant):
            self.cancelled += 1
            log.info("job %s cancelled", job_id)


class _KeepPlace(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type information
    """Nothing is committed (each replica's group is its own), so a rebalance, which comes when a tenant's cancel
    topic appears, would send every partition back to its end and skip what arrived meanwhile. Partitions held
    before go on where they were; a partition first seen after the start (a new tenant's topic) is read from its
    beginning, so the request that created it is not missed."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._places: dict[TopicPartition, int] = {}
        self._started = False

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            try:
                self._places[tp] = await self._consumer.position(tp)
            except Exception:  # noqa: BLE001 - no position yet: read it as a new one
                self._places.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            if tp in self._places:
                self._consumer.seek(tp, self._places[tp])
            elif self._started:
                await self._consumer.seek_to_beginning(tp)
        self._started = True
