"""A consumer group's lag reaches 0 after its jobs are answered, also where the infer topic's records were written
in transactions (each ends in a marker the consumer steps over; KEDA issue 5675), in both delivery modes."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import digit_jobs, read_topic

pytestmark = pytest.mark.integration


async def group_lag(settings, group: str, topic: str) -> dict[int, int]:
    """End offset less committed offset, per partition of `topic` (what a lag-based autoscaler reads)."""
    admin = AIOKafkaAdminClient(**settings.connection_kwargs())
    consumer = AIOKafkaConsumer(**settings.connection_kwargs(), isolation_level="read_committed")
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]  # as the service created them
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
        await admin.close()
    return {tp.partition: ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in partitions}


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_the_lag_reaches_zero_after_jobs_written_in_transactions(kafka_settings, service_env, vision_registry,
                                                                      tmp_path, delivery):
    service = ServiceProcess(service_env | {"AIAAS_VISION_DELIVERY": delivery}, tmp_path / "vision.log").start()
    topic = f"{kafka_settings.topic_prefix}.vision.infer"
    try:
        producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), transactional_id=f"upstream-{delivery}")
        await producer.start()
        try:
            for n, (image, _) in enumerate(digit_jobs(12)):  # one transaction per job: a marker after each
                async with producer.transaction():
                    await producer.send_and_wait(topic, encode(Job(job_id=f"tx-{n}", model="vision",
                                                                   inputs={"image": image})), key=f"tx-{n}".encode())
        finally:
            await producer.stop()
        results = await read_topic(kafka_settings, f"{kafka_settings.topic_prefix}.vision.results", 12)
        assert len({r.key for r in results}) == 12
        group = f"{kafka_settings.topic_prefix}.vision"
        deadline, lag = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            lag = await group_lag(kafka_settings, group, topic)
            if lag and not any(lag.values()):
                break
            await asyncio.sleep(0.5)
        assert lag and not any(lag.values()), f"lag per partition stayed {lag}\n{service.log_text()[-3000:]}"
    finally:
        service.stop()


async def test_a_restarted_service_commits_past_markers_of_partitions_it_took_no_record_from(
        kafka_settings, service_env, vision_registry, tmp_path):
    # The group answered an upstream's transactional jobs and committed the offset after the last record, short of
    # the marker after it (a replica stopped before its next idle second). The restarted service takes no record
    # there, only steps over the marker: it still commits, so the lag reads 0 (else a type set to scale to zero
    # never would).
    topic, group = f"{kafka_settings.topic_prefix}.vision.infer", f"{kafka_settings.topic_prefix}.vision"
    partition = TopicPartition(topic, 0)
    admin = AIOKafkaAdminClient(**kafka_settings.connection_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, kafka_settings.partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), transactional_id="upstream-restart")
    await producer.start()
    try:
        async with producer.transaction():
            sent = await producer.send_and_wait(topic, b"answered before", key=b"old", partition=0)
    finally:
        await producer.stop()
    group_member = AIOKafkaConsumer(**kafka_settings.connection_kwargs(), group_id=group, enable_auto_commit=False)
    await group_member.start()
    try:
        group_member.assign([partition])
        await group_member.commit({partition: sent.offset + 1})  # the marker is at sent.offset + 1
    finally:
        await group_member.stop()
    assert (await group_lag(kafka_settings, group, topic))[0] == 1

    service = ServiceProcess(service_env | {"AIAAS_VISION_DELIVERY": "exactly-once"}, tmp_path / "vision.log").start()
    try:
        deadline, lag = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            lag = await group_lag(kafka_settings, group, topic)
            if not any(lag.values()):
                break
            await asyncio.sleep(0.5)
        assert lag is not None and not any(lag.values()), \
            f"lag per partition stayed {lag}\n{service.log_text()[-3000:]}"
    finally:
        service.stop()
