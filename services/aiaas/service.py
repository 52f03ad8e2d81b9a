"""A model type's service process: a Kafka consumer and producer around the worker core.

Each model package calls `run_service(...)` from its `__main__`. The service creates its
topics, joins its consumer group on `<prefix>.<model>.infer`, and runs a `JobPipeline`
(fetch → batch → model → publish → commit, with bounded in-flight work and paused partitions
when it is full). Results and dead letters go out through an idempotent `acks=all` producer.
SIGTERM or SIGINT stops fetching, drains in-flight work, commits, and leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .pipeline import JobPipeline, PipelineStats
from .runtime import ModelRuntime
from .settings import KafkaSettings, WorkerSettings
from .topics import ModelTopics, dlq_topic, ensure_topics, service_topics
from .tracing import setup_tracing
from .worker import BatchWorker

__all__ = ["ModelService", "KafkaSink", "run_service"]

log = logging.getLogger("aiaas.service")


class KafkaSink:
    """ResultSink over an idempotent, acks=all producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Publish and await the broker's acknowledgement."""
        delivery = await self._producer.send(topic, value, key=key, headers=headers)
        await delivery


class ModelService:
    """Wires one runtime to its topics: `<prefix>.<model>.infer` in, `.results` and `.dlq` out."""

    def __init__(self, runtime: ModelRuntime, kafka: KafkaSettings, worker: WorkerSettings) -> None:
        self.runtime = runtime
        self.kafka = kafka
        self.settings = worker
        self.topics = ModelTopics.of(runtime.model, kafka.topic_prefix)
        self.group = worker.group_id or f"{kafka.topic_prefix}.{runtime.model}"
        self._pipeline: JobPipeline | None = None
        self._stop_requested = False

    def stop(self) -> None:
        """Ask a running service to drain and exit (what SIGTERM does)."""
        self._stop_requested = True
        if self._pipeline is not None:
            self._pipeline.stop()

    async def run(self) -> PipelineStats:
        """Create topics, join the group, serve until `stop()`, then drain, commit and leave."""
        created = await ensure_topics(self.kafka, service_topics(self.runtime.model, self.kafka))
        if created:
            log.info("created topics %s", ", ".join(created))
        producer = AIOKafkaProducer(
            **self.kafka.connection_kwargs(), client_id=f"aiaas-{self.runtime.model}", acks="all",
            enable_idempotence=True, linger_ms=1, max_request_size=self.kafka.max_message_bytes + 64 * 1024,
        )
        consumer = AIOKafkaConsumer(
            **self.kafka.connection_kwargs(), client_id=f"aiaas-{self.runtime.model}", group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.kafka.max_message_bytes + 64 * 1024,
        )
        await producer.start()
        worker = BatchWorker(
            self.runtime, KafkaSink(producer), topics=self.topics, dlq_topic=dlq_topic(self.kafka.topic_prefix),
            group=self.group, max_message_bytes=self.kafka.max_message_bytes,
        )
        pipeline = JobPipeline(
            worker, consumer, max_batch=self.settings.max_batch, max_wait_ms=self.settings.max_wait_ms,
            max_in_flight=self.settings.max_in_flight, drain_timeout_s=self.settings.graceful_timeout_s,
        )
        try:
            consumer.subscribe([self.topics.infer], listener=pipeline.rebalance_listener)
            await consumer.start()
            self._pipeline = pipeline
            if self._stop_requested:
                pipeline.stop()
            log.info(
                "%s service ready: %s v%s, consuming %s as group %s (max_batch %d, max_in_flight %d)",
                self.runtime.model, self.runtime.model, self.runtime.version, self.topics.infer, self.group,
                self.settings.max_batch, self.settings.max_in_flight,
            )
            stats = await pipeline.run()
        finally:
            await consumer.stop()  # leaves the group, so its partitions move at once
            await producer.stop()
            worker.close()
        log.info(
            "%s service stopped: %d jobs in %d batches, paused %d times, %d rewinds, %d failed commits",
            self.runtime.model, stats.jobs, stats.batches, stats.pauses, stats.rewinds, stats.commit_failures,
        )
        return stats


def run_service(model: str, load_runtime: Callable[[], ModelRuntime], worker: WorkerSettings) -> None:
    """Entry point body of a model service process: tracing, runtime, serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = setup_tracing(f"aiaas-{model}")
    try:
        asyncio.run(_serve(ModelService(load_runtime(), KafkaSettings(), worker)))
    finally:
        provider.shutdown()


async def _serve(service: ModelService) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()
