"""A FastStream app reads aiaas results with `aiaas.client.faststream.results_subscriber` (real broker, real
service)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from aiaas.client.client import AiaasClient
from aiaas.client.faststream import results_subscriber
from aiaas.contract.envelopes import Result
from aiaas.contract.topics import ModelTopics
from tests.integration.test_vision_end_to_end import digit_jobs

pytestmark = pytest.mark.integration


async def test_a_faststream_handler_gets_every_result_as_a_result_and_a_junk_record_does_not_stop_it(
        kafka_settings, vision_service, topic_prefix):
    vision_service.start()
    samples = digit_jobs(20)
    got: dict[str, Result] = {}
    done = asyncio.Event()
    broker = KafkaBroker(kafka_settings.bootstrap_servers, security=kafka_settings.faststream_security())

    @results_subscriber(broker, "vision", group_id=f"{topic_prefix}.billing", kafka=kafka_settings)
    async def on_result(result: Result) -> None:
        got[result.job_id] = result
        if len(got) == len(samples):
            done.set()

    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await producer.start()
    async with broker:
        await broker.start()
        try:
            async with AiaasClient(kafka_settings) as client:
                first = [await client.submit("vision", {"image": img}) for img, _ in samples[:10]]
                await asyncio.gather(*(h.result(timeout=60) for h in first))
                # Not a result: the handler cannot take it; it is committed and logged, and reading goes on.
                await producer.send_and_wait(ModelTopics.of("vision", topic_prefix).results, b"\xc1 not msgpack",
                                             key=b"junk")
                rest = [await client.submit("vision", {"image": img}) for img, _ in samples[10:]]
                await asyncio.wait_for(done.wait(), 60)
        finally:
            await producer.stop()
    assert set(got) == {h.job_id for h in first + rest}
    assert all(isinstance(r, Result) and r.status == "ok" and r.model == "vision" for r in got.values())
