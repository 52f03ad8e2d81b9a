"""The outcome memory seeded from a results topic on the real broker remembers what it read as that topic's tenant's."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Result
from aiaas.kafka.admin import ensure_topics
from aiaas.serving.idempotency import OutcomeCache, seed_from_results

pytestmark = pytest.mark.integration


async def publish_results(settings, topic: str, job_ids: list[str]) -> None:
    await ensure_topics(settings, [topic])
    producer = AIOKafkaProducer(**settings.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, encode(Result(job_id=j, model="text", status="ok")), key=j.encode())
                for j in job_ids]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def test_seeded_outcomes_belong_to_the_tenant_of_the_topic_they_were_read_from(kafka_settings, topic_prefix):
    alice_topic = f"{topic_prefix}.text.results.alice"
    await publish_results(kafka_settings, alice_topic, ["job-1", "job-2"])
    cache = OutcomeCache(100, max_bytes=1 << 20)
    assert await seed_from_results(cache, kafka_settings, alice_topic, tenant="alice") == 2
    assert cache.get("job-1", tenant="alice").topic == alice_topic
    assert cache.get("job-1", tenant="bob") is None and cache.get("job-1") is None  # bob reusing the id runs anew


async def test_seeding_stays_within_the_byte_budget(kafka_settings, topic_prefix):
    topic = f"{topic_prefix}.text.results"
    await publish_results(kafka_settings, topic, [f"job-{i}" for i in range(200)])
    cache = OutcomeCache(1000, max_bytes=20 * 1024)
    assert await seed_from_results(cache, kafka_settings, topic) == 200
    assert 0 < len(cache) < 200 and cache.memory_bytes <= 20 * 1024
