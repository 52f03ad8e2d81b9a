"""Priority on the real broker: urgent jobs overtake a backlog of ordinary ones, and the backlog still drains."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job
from aiaas.contract.topics import ModelTopics, service_topics
from aiaas.kafka.admin import ensure_topics
from tests.integration.test_vision_end_to_end import digit_jobs

pytestmark = pytest.mark.integration

BACKLOG = 6000
URGENT = 10


async def publish_backlog(settings, topic: str, image) -> None:
    producer = AIOKafkaProducer(**settings.connection_kwargs(), linger_ms=5)
    await producer.start()
    try:
        sends = [await producer.send(topic, encode(Job(job_id=f"backlog-{i}", model="vision", inputs={"image": image})),
                                     key=f"backlog-{i}".encode()) for i in range(BACKLOG)]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def results_in_order(settings, topic: str, expected: int, timeout: float = 120) -> list[str]:
    """The job ids of the first `expected` results on `topic`, in the order the service wrote them."""
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    seen: list[tuple[int, str]] = []
    deadline = time.time() + timeout
    try:
        while len(seen) < expected and time.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                seen += [(r.timestamp, decode_result(r.value, 1 << 22).job_id) for r in batch]
    finally:
        await consumer.stop()
    return [job_id for _, job_id in sorted(seen)]


async def test_urgent_jobs_overtake_a_backlog_and_the_backlog_is_answered_in_full(kafka_settings, vision_service):
    topics = ModelTopics.of("vision", kafka_settings.topic_prefix)
    image = digit_jobs(1)[0][0]
    await ensure_topics(kafka_settings, service_topics("vision", kafka_settings))
    await publish_backlog(kafka_settings, topics.infer, image)  # waiting in Kafka before the service starts
    async with AiaasClient(kafka_settings) as client:
        # The first urgent job opens the client's producer and results listener before the service starts, so the
        # others race only their own sends against a backlog that drains in about a second. (When the client started
        # after the service, a slow CI minute saw most of the backlog answered before they were sent.)
        handles = [await client.submit("vision", {"image": image}, priority=5)]
        vision_service.start()
        handles += [await client.submit("vision", {"image": image}, priority=5) for _ in range(URGENT - 1)]
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
    assert all(r.status == "ok" for r in results)
    order = await results_in_order(kafka_settings, topics.results, BACKLOG + URGENT)
    assert len(order) == BACKLOG + URGENT and len(set(order)) == BACKLOG + URGENT  # the backlog drained in full
    urgent = {h.job_id for h in handles}
    before = [sum(1 for job_id in order[:i] if job_id not in urgent) for i, job_id in enumerate(order)
              if job_id in urgent]
    # Published after the whole backlog (on a topic of their own): without the lane they would come last.
    assert max(before) < BACKLOG // 2, before
