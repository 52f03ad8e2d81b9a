"""A model type's service process: FastStream app + batch subscriber + the worker core.

Each model package calls `run_service(...)` from its `__main__`. Delivery is at-least-once:
the subscriber acknowledges (commits) a polled batch only after `BatchWorker.handle` has seen
every result and dead letter of it acknowledged (`acks=all`, idempotent producer). On an
unexpected failure the batch is not committed: it is rewound and redelivered. On SIGTERM
FastStream stops polling, waits up to `graceful_timeout_s` for the batch in hand, and the
consumer leaves its group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy

from .runtime import ModelRuntime
from .settings import KafkaSettings, WorkerSettings
from .topics import ModelTopics, dlq_topic, ensure_topics, service_topics
from .tracing import setup_tracing
from .worker import BatchWorker

__all__ = ["ModelService", "run_service", "FastStreamSink"]

log = logging.getLogger("aiaas.service")


class FastStreamSink:
    """ResultSink over the broker's (idempotent, acks=all) producer."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Publish and await the broker's acknowledgement."""
        await self._broker.publish(value, topic=topic, key=key, headers={k: v.decode() for k, v in headers})


class ModelService:
    """Wires one runtime to its topics: `<prefix>.<model>.infer` in, `.results` and `.dlq` out."""

    def __init__(self, runtime: ModelRuntime, kafka: KafkaSettings, worker: WorkerSettings) -> None:
        self.kafka = kafka
        self.topics = ModelTopics.of(runtime.model, kafka.topic_prefix)
        self.group = worker.group_id or f"{kafka.topic_prefix}.{runtime.model}"
        self.broker = KafkaBroker(
            kafka.bootstrap_servers,
            security=kafka.faststream_security(),
            request_timeout_ms=kafka.request_timeout_ms,
            acks="all",
            enable_idempotence=True,
            max_request_size=kafka.max_message_bytes + 64 * 1024,
            linger_ms=1,
            graceful_timeout=worker.graceful_timeout_s,
            client_id=f"aiaas-{runtime.model}",
            log_level=logging.DEBUG,  # FastStream's per-batch "Received/Processed" lines: debug only
        )
        self.worker = BatchWorker(
            runtime,
            FastStreamSink(self.broker),
            topics=self.topics,
            dlq_topic=dlq_topic(kafka.topic_prefix),
            group=self.group,
            max_message_bytes=kafka.max_message_bytes,
        )
        self.broker.subscriber(
            self.topics.infer,
            group_id=self.group,
            batch=True,
            max_records=worker.max_batch,
            # getmany returns as soon as any job is there: a lone job is never held for a batch.
            batch_timeout_ms=max(1, worker.max_wait_ms),
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024,
        )(self._on_batch)

    async def _on_batch(self, body: list[bytes], message: KafkaMessage) -> None:
        try:
            await self.worker.handle(message.raw_message)
        except BaseException:
            # Not every outcome was acknowledged: rewind so the batch is delivered again.
            await message.nack()
            raise
        await message.ack()

    def app(self) -> FastStream:
        """The FastStream application (topics are created at start, idempotently)."""
        app = FastStream(self.broker)

        @app.on_startup
        async def _create_topics() -> None:
            created = await ensure_topics(self.kafka, service_topics(self.worker.runtime.model, self.kafka))
            if created:
                log.info("created topics %s", ", ".join(created))

        @app.after_startup
        async def _ready() -> None:
            log.info(
                "%s service ready: %s v%s, consuming %s as group %s",
                self.worker.runtime.model, self.worker.runtime.model, self.worker.runtime.version,
                self.topics.infer, self.group,
            )

        @app.after_shutdown
        async def _release() -> None:
            self.worker.close()

        return app


def run_service(model: str, load_runtime: Callable[[], ModelRuntime], worker: WorkerSettings) -> None:
    """Entry point body of a model service process: tracing, runtime, FastStream app until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = setup_tracing(f"aiaas-{model}")
    try:
        service = ModelService(load_runtime(), KafkaSettings(), worker)
        asyncio.run(service.app().run())
    finally:
        provider.shutdown()
