"""Registry changes announced on `<prefix>.models`, so every service instance can reload.

Whoever changes the registry (a build, a training job, `aiaas models promote|rollback`)
publishes a `ModelEvent` keyed by the model type. Services read the topic from its end with
a group-less consumer (every instance sees every event) and reload in the background when
the alias they serve has moved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Literal

import msgpack
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import BaseModel, Field

from aiaas.contract.topics import models_topic
from aiaas.kafka.admin import ensure_topics, partition_count
from aiaas.kafka.unparseable import UnparseableSearch, UnreadableRecord, is_unparseable
from aiaas.settings import KafkaSettings

__all__ = ["ModelEvent", "announce", "ModelWatcher"]

log = logging.getLogger("aiaas.announce")


class ModelEvent(BaseModel):
    """One change to a model type's registry entries."""

    model: str = Field(description="Model type.")
    action: Literal["registered", "promoted", "rolled_back"] = Field(description="What happened.")
    version: int = Field(description="The version registered, promoted or rolled back to.")
    aliases: dict[str, int] = Field(default_factory=dict, description="Every alias of the model after the change.")
    job_id: str | None = Field(None, description="Training job that caused it, if any.")
    at: float = Field(default_factory=time.time, description="Unix seconds.")

    def encode(self) -> bytes:
        """msgpack bytes for the topic."""
        return msgpack.packb(self.model_dump(mode="json"))


async def announce(kafka: KafkaSettings, event: ModelEvent) -> None:
    """Publish `event` on `<prefix>.models` (acks=all) and return when the broker has it."""
    topic = models_topic(kafka.topic_prefix)
    await ensure_topics(kafka, [topic])
    producer = AIOKafkaProducer(**kafka.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, event.encode(), key=event.model.encode())
    finally:
        await producer.stop()


class ModelWatcher:
    """Events for one model type published after `start()` (group-less: every instance sees every event)."""

    def __init__(self, kafka: KafkaSettings, model: str) -> None:
        self._kafka, self._model = kafka, model
        self._consumer: AIOKafkaConsumer | None = None
        self._next: dict[TopicPartition, int] = {}  # per partition: the offset after the last record read
        self._search: UnparseableSearch | None = None

    async def start(self) -> None:
        """Connect and pin the position at the end of the topic: later events are not missed."""
        topic = models_topic(self._kafka.topic_prefix)
        await ensure_topics(self._kafka, [topic])
        consumer = AIOKafkaConsumer(**self._kafka.connection_kwargs(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in range(await partition_count(self._kafka, topic, wait_s=10))]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            self._next[tp] = await consumer.position(tp)
        self._consumer = consumer
        self._search = UnparseableSearch(consumer, max_steps=64, logger=log)

    async def events(self) -> AsyncIterator[tuple[ModelEvent, ConsumerRecord]]:
        """The events, with their records (headers carry the trace context), as they arrive, until `stop()`.

        A record that is not an event is passed over; one the Kafka client cannot parse is stepped over.
        """
        assert self._consumer is not None and self._search is not None, "call start() first"
        while True:
            try:
                fetched = await self._consumer.getmany(timeout_ms=1000)
            except Exception as exc:
                if not is_unparseable(exc):
                    raise
                fetched = await self._search.step_over(exc, self._next)
            for tp, records in fetched.items():
                for record in records:
                    self._next[tp] = record.offset + 1
                    event = None if isinstance(record, UnreadableRecord) else _decode(record.value)
                    if event is not None and event.model == self._model:
                        yield event, record

    async def stop(self) -> None:
        """Disconnect."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def _decode(value: bytes | None) -> ModelEvent | None:
    try:
        return ModelEvent.model_validate(msgpack.unpackb(value or b"", max_bin_len=1 << 16, max_str_len=1 << 16))
    except Exception as exc:  # anyone able to write the topic can write anything: it is passed over, never raised
        log.warning("ignoring an unreadable record on the models topic: %s", f"{type(exc).__name__}: {exc}"[:300])
        return None
