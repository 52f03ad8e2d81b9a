"""The named hostile records against the real vision service on the real broker, in both delivery modes.

Each was able to stop a service (a null `traceparent` or `aiaas.attempt` header killed it on every restart; a
`reply_to` of "." rewound its partition for ever), or is a case of the same family: a record aiokafka itself
cannot parse, a retry record whose time never comes, a reply topic that does not exist. Each must end in an
error result and/or a dead letter while the service stays up, and the good job published right after each must
be answered within 2 s.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.contract.codec import decode_result
from aiaas.contract.topics import ModelTopics
from tests.hostile_corpus import good_vision_job
from tests.integration.unparseable import publish_unparseable

pytestmark = pytest.mark.integration

NEXT_JOB_WITHIN_S = 2.0


def hostile_records(topics: ModelTopics, prefix: str) -> list[tuple[str, str, bytes | None, bytes, list]]:
    """(name, topic, key, value, headers) of each named case."""
    def job(name: str, **fields) -> bytes:
        import msgpack

        envelope = msgpack.unpackb(good_vision_job(name)) | fields
        return msgpack.packb(envelope, use_bin_type=True)

    far_future = str(time.time() + 10 * 365 * 86400).encode()
    return [
        ("null-traceparent", topics.infer, b"null-traceparent", good_vision_job("null-traceparent"),
         [("traceparent", None)]),
        ("null-attempt", topics.infer, b"null-attempt", good_vision_job("null-attempt"), [("aiaas.attempt", None)]),
        ("junk-trace", topics.infer, b"junk-trace", good_vision_job("junk-trace"),
         [("traceparent", b"\xff\xfe junk"), ("baggage", b"\x00" * 10)]),
        ("many-headers", topics.infer, b"many-headers", good_vision_job("many-headers"),
         [(f"h{i}", b"x") for i in range(3000)]),
        ("reply-to-dot", topics.infer, b"reply-to-dot", job("reply-to-dot", reply_to="."), []),
        ("reply-to-dlq", topics.infer, b"reply-to-dlq", job("reply-to-dlq", reply_to=f"{prefix}.dlq"), []),
        ("reply-to-missing", topics.infer, b"reply-to-missing",
         job("reply-to-missing", reply_to=f"{topics.results}.nobody"), []),
        ("retry-far-future", topics.retry, b"retry-far-future", good_vision_job("retry-far-future"),
         [("aiaas.attempt", b"2"), ("aiaas.retry.not_before", far_future),
          ("aiaas.origin.topic", topics.infer.encode()), ("aiaas.origin.partition", b"0"),
          ("aiaas.origin.offset", b"0")]),
        ("retry-nan", topics.retry, b"retry-nan", good_vision_job("retry-nan"),
         [("aiaas.attempt", None), ("aiaas.retry.not_before", b"nan")]),
        ("control-key", topics.infer, b"control\x00key", b"\xc1 not a job", []),
    ]


async def _results_reader(settings, topic: str, seen: dict, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    await consumer.start()
    try:
        while not stop.is_set():
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                for record in batch:
                    result = decode_result(record.value, settings.max_message_bytes)
                    seen.setdefault(result.job_id, (time.monotonic(), result))
    finally:
        await consumer.stop()


async def _dead_letters(settings, topic: str, want: int, timeout: float = 30) -> list:
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    await consumer.start()
    records, deadline = [], time.monotonic() + timeout
    try:
        while len(records) < want and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records += batch
    finally:
        await consumer.stop()
    return records


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_named_hostile_records_never_stop_the_service_and_the_next_job_is_answered_fast(
        delivery, kafka_settings, service_env, vision_registry, tmp_path, topic_prefix):
    from tests.integration.conftest import ServiceProcess

    env = service_env | {"AIAAS_VISION_DELIVERY": delivery, "AIAAS_VISION_INSTANCE_ID": f"hostile-{delivery}",
                         "AIAAS_VISION_MAX_WAIT_MS": "2"}
    service = ServiceProcess(env, tmp_path / "vision.log").start()
    topics = ModelTopics.of("vision", topic_prefix)
    seen: dict = {}
    stop = asyncio.Event()
    reader = asyncio.create_task(_results_reader(kafka_settings, topics.results, seen, stop))
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    cases = hostile_records(topics, topic_prefix)
    waits: dict[str, float] = {}
    try:
        await producer.send_and_wait(topics.infer, good_vision_job("warm-up"), key=b"warm-up")
        await _wait_for(seen, "warm-up", 60)
        for name, topic, key, value, headers in [*cases, ("unparseable", topics.infer, None, b"", None)]:
            if headers is None:
                await publish_unparseable(kafka_settings, topic, key="unparseable",
                                          value=good_vision_job("unparseable"))
            else:
                await producer.send_and_wait(topic, value, key=key, headers=headers, partition=0)
            sent = time.monotonic()
            await producer.send_and_wait(topics.infer, good_vision_job(f"after-{name}"), key=f"after-{name}".encode(),
                                         partition=0)  # the same partition: it queues right behind the bad record
            waits[name] = await _wait_for(seen, f"after-{name}", 30) - sent
        assert service.proc.poll() is None, service.log_text()[-3000:]
    finally:
        stop.set()
        await producer.stop()
        await reader
        service.stop()
    log = service.log_text()
    assert "Traceback" not in log.split(" ready: ", 1)[1] or "could not parse" in log, log[-3000:]
    slow = {name: round(wait, 2) for name, wait in waits.items() if wait > NEXT_JOB_WITHIN_S}
    assert not slow, f"good jobs answered later than {NEXT_JOB_WITHIN_S} s after: {slow}"

    # Every hostile record is dead-lettered once; those with a job id and a usable reply also got an error result.
    dead = await _dead_letters(kafka_settings, f"{topic_prefix}.dlq", len(cases) + 1)
    by_type: dict[str, str] = {}
    for record in dead:
        headers = dict(record.headers)
        by_type[headers["aiaas.job.id"].decode() or f"@{headers['aiaas.origin.offset'].decode()}"] = \
            headers["aiaas.error.type"].decode()
    assert len(dead) == len(cases) + 1, by_type
    for name in ("null-traceparent", "null-attempt", "junk-trace", "many-headers", "retry-nan"):
        assert by_type[name] == "InvalidHeaders", (name, by_type)
        assert seen[name][1].status == "error" and seen[name][1].error.type == "InvalidHeaders"
    for name in ("reply-to-dot", "reply-to-dlq", "reply-to-missing"):
        assert by_type[name] == "RefusedReplyTo" and seen[name][1].error.type == "RefusedReplyTo", name
    assert by_type["retry-far-future"] == "InvalidHeaders"
    assert "UnparseableRecord" in by_type.values() and "UndecodableMessage" in by_type.values()
    assert all(seen[f"after-{name}"][1].status == "ok" for name in waits)


async def _wait_for(seen: dict, job_id: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while job_id not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no result for {job_id} within {timeout} s")
        await asyncio.sleep(0.005)
    return seen[job_id][0]


async def test_the_registry_follower_passes_over_any_record_on_the_models_topic(kafka_settings):
    from aiaas.contract.topics import models_topic
    from aiaas.registry.announce import ModelEvent, ModelWatcher, announce

    watcher = ModelWatcher(kafka_settings, "vision")
    await watcher.start()
    topic = models_topic(kafka_settings.topic_prefix)
    try:
        producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all")
        await producer.start()
        try:
            for partition in range(3):  # junk, null headers and an unparseable record ahead of the real event
                await producer.send_and_wait(topic, b"\xc1 junk", key=b"vision", partition=partition,
                                             headers=[("traceparent", None)])
                await publish_unparseable(kafka_settings, topic, key="vision", value=b"\xc1", partition=partition)
        finally:
            await producer.stop()
        await announce(kafka_settings,
                       ModelEvent(model="vision", action="promoted", version=7, aliases={"production": 7}))
        events = watcher.events()
        event, _ = await asyncio.wait_for(anext(events), 60)
        assert (event.action, event.version) == ("promoted", 7)
    finally:
        await watcher.stop()
