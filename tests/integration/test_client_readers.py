"""The client's readers on the real broker: hostile result records never stop them; they follow new partitions.

Hostile records are what a buggy or rogue publisher can put on a results topic: bodies that are not
results, job ids that are not job ids, null or non-UTF-8 header values, junk trace context, keys that
are not job ids, and a header key that is not UTF-8 (aiokafka itself cannot parse that record: its
`getmany` raises on it, again and again, unless the reader steps past it).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Result
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.admin import ensure_topics
from tests.integration.unparseable import publish_unparseable

pytestmark = pytest.mark.integration

def result(job_id: str) -> bytes:
    return encode(Result(job_id=job_id, model="vision", status="ok"))


async def publish(settings, topic: str, records: list[tuple[bytes | None, bytes, list, int]]) -> None:
    """(key, value, headers, partition) records, in order."""
    producer = AIOKafkaProducer(**settings.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers, partition in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers, partition=partition)
    finally:
        await producer.stop()


def hostile(job_id: str, partition: int = 0) -> tuple[list[tuple], list[str]]:
    """Hostile records keyed by `job_id` (or by junk), and the job ids of those among them that are still results."""
    records = [
        (job_id.encode(), b"\xc1 not msgpack", [], partition),
        (job_id.encode(), b"", [], partition),
        (job_id.encode(), result("bad\nid"), [], partition),
        (job_id.encode(), result("x" * 1000), [], partition),
        (job_id.encode(), None, [], partition),  # a tombstone
        (b"hdr-null", result("hdr-null"), [("traceparent", None), ("baggage", None), ("x", None)], partition),
        (b"hdr-bytes", result("hdr-bytes"), [("traceparent", b"\xff\xfe"), ("tracestate", b"\x80" * 600)], partition),
        (b"hdr-junk", result("hdr-junk"), [("traceparent", b"00-zz-zz-01"), ("baggage", b"=;=,%%%")], partition),
        (b"\xff\xfe", result("key-junk"), [], partition),
    ]
    return records, ["hdr-null", "hdr-bytes", "hdr-junk", "key-junk"]


async def collect(iterator, until: set[str], timeout: float = 60) -> list[str]:
    """Job ids the iterator hands over, until it has handed over every one of `until`."""
    ids: list[str] = []
    async with asyncio.timeout(timeout):
        async for r in iterator:
            ids.append(r.job_id)
            if until <= set(ids):
                break
    return ids


@pytest.mark.parametrize("group", [None, "readers"])
async def test_a_results_reader_passes_over_hostile_records(kafka_settings, caplog, group):
    topic = ModelTopics.of("vision", kafka_settings.topic_prefix).results
    await ensure_topics(kafka_settings, [topic])
    records, still_results = hostile("victim")
    await publish(kafka_settings, topic, [(b"first", result("first"), [], 0), *records])
    await publish_unparseable(kafka_settings, topic, key="victim", value=result("unparseable"))
    await publish(kafka_settings, topic, [(b"next", result("next"), [], 0)])
    client = AiaasClient(kafka_settings)  # results() needs no producer
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "aiaas.client"):
        got = await collect(client.results("vision", from_beginning=True, group_id=group), until={"next"})
    assert got == ["first", *still_results, "next"]
    assert time.monotonic() - started < 20
    unparseable_offset = 1 + len(records)
    assert (f"skipped the record at {topic}[0] offset {unparseable_offset}: the Kafka client cannot parse it"
            in caplog.text)
    for offset in range(1, 6):  # the bodies that are no results, the empty one of a tombstone too
        assert f"skipped the record at {topic}[0] offset {offset}:" in caplog.text


async def test_the_result_listener_passes_over_hostile_records_and_answers_the_next_one(kafka_settings, caplog):
    topic = ModelTopics.of("vision", kafka_settings.topic_prefix).results
    async with AiaasClient(kafka_settings) as client:
        handle = await client.submit("vision", {}, job_id="victim")  # no service runs: the test answers it
        records, _ = hostile("victim", partition=1)
        await publish(kafka_settings, topic, records)
        await publish_unparseable(kafka_settings, topic, key="victim", value=result("victim"), partition=1)
        await publish(kafka_settings, topic, [(b"victim", result("victim"), [], 1)])
        started = time.monotonic()
        assert (await handle.result(timeout=20)).job_id == "victim"
        assert time.monotonic() - started < 10
        later = await client.submit("vision", {}, job_id="later")  # the listener is still there for the next job
        await publish(kafka_settings, topic, [(b"later", result("later"), [], 2)])
        assert (await later.result(timeout=10)).job_id == "later"
    assert f"{topic}[1] offset {len(records)}: the Kafka client cannot parse it" in caplog.text


async def grow(settings, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(**settings.connection_kwargs())
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=partitions)})
    finally:
        await admin.close()


@pytest.mark.parametrize("group", [None, "readers"])
async def test_a_results_reader_follows_partitions_added_while_it_reads(kafka_settings, group):
    topic = ModelTopics.of("vision", kafka_settings.topic_prefix).results
    await ensure_topics(kafka_settings, [topic])  # 3 partitions
    await publish(kafka_settings, topic, [(b"before", result("before"), [], 0)])
    client = AiaasClient(kafka_settings)
    reader = client.results("vision", from_beginning=True, group_id=group)
    assert await collect(reader, until={"before"}) == ["before"]  # reading, on the three partitions
    await grow(kafka_settings, topic, 5)
    await publish(kafka_settings, topic, [(b"new-3", result("new-3"), [], 3), (b"old-0", result("old-0"), [], 0),
                                          (b"new-4", result("new-4"), [], 4)])
    try:
        got = await collect(reader, until={"new-3", "old-0", "new-4"}, timeout=30)
    finally:
        await reader.aclose()
    assert sorted(got) == ["new-3", "new-4", "old-0"]


async def test_the_result_listener_follows_partitions_added_while_a_job_waits(kafka_settings):
    topic = ModelTopics.of("vision", kafka_settings.topic_prefix).results
    async with AiaasClient(kafka_settings) as client:
        handle = await client.submit("vision", {}, job_id="grown")
        await grow(kafka_settings, topic, 5)
        await publish(kafka_settings, topic, [(b"grown", result("grown"), [], 4)])
        assert (await handle.result(timeout=30)).job_id == "grown"
