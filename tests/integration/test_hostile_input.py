"""The hostile corpus against the real vision service process on the real broker.

Every message of tests/hostile_corpus.py is published between good jobs: each good job must get an
`ok` result, each hostile message a dead letter (matched by its origin partition and offset) and an
error result when its job id is known; the service must stay up, never fail a publish, and keep its
resident memory within a bound.
"""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.contract.codec import decode_result
from tests.hostile_corpus import good_vision_job, hostile_messages

pytestmark = pytest.mark.integration

ROUNDS = 2
RSS_GROWTH_BOUND_KIB = 64 * 1024
"""What the service's resident memory may grow by over both rounds (it holds about 170 MiB to begin with)."""


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (kB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def read_until(settings, topic: str, done, timeout: float = 90) -> list:
    """Records of `topic` from the beginning until `done(records)` or time runs out."""
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=settings.max_message_bytes + 1024 * 1024)
    await consumer.start()
    records, deadline = [], time.time() + timeout
    try:
        while not done(records) and time.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_hostile_corpus_is_dead_lettered_while_good_jobs_are_served(kafka_settings, vision_service, topic_prefix):
    vision_service.start()
    pid = vision_service.proc.pid
    infer, dlq, results_topic = (f"{topic_prefix}.vision.infer", f"{topic_prefix}.dlq",
                                 f"{topic_prefix}.vision.results")
    max_bytes = kafka_settings.max_message_bytes
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all",
                                max_request_size=max_bytes + 1024 * 1024)
    await producer.start()
    good_ids: list[str] = []
    hostile: dict[tuple[int, int], object] = {}  # (partition, offset) → HostileMessage
    try:
        for i in range(20):  # warm up before the first memory reading
            good_ids.append(f"warm-{i}")
            await producer.send_and_wait(infer, good_vision_job(good_ids[-1]), key=good_ids[-1].encode())
        await read_until(kafka_settings, results_topic, lambda records: len(records) >= 20)
        rss_before = rss_kib(pid)

        for round_ in range(ROUNDS):
            for i, message in enumerate(hostile_messages("vision", f"r{round_}", max_bytes=max_bytes)):
                good_ids.append(f"good-{round_}-{i}")
                await producer.send_and_wait(infer, good_vision_job(good_ids[-1]), key=good_ids[-1].encode())
                sent = await producer.send_and_wait(infer, message.value, key=message.key)
                hostile[(sent.partition, sent.offset)] = message
            good_ids.append(f"good-{round_}-last")
            await producer.send_and_wait(infer, good_vision_job(good_ids[-1]), key=good_ids[-1].encode())
    finally:
        await producer.stop()

    known = [m for m in hostile.values() if m.job_id_known]
    dead = await read_until(kafka_settings, dlq, lambda records: len(records) >= len(hostile))
    results = await read_until(kafka_settings, results_topic,
                               lambda records: len(records) >= len(good_ids) + len(known))
    rss_after = rss_kib(pid)

    assert vision_service.proc.poll() is None, "the service died"
    log = vision_service.log_text()
    assert "rewinding" not in log and "Traceback" not in log, log[-3000:]  # no publish failed, nothing crashed

    by_origin = {}
    for record in dead:
        headers = dict(record.headers)
        assert headers["aiaas.origin.topic"] == infer.encode()
        origin = (int(headers["aiaas.origin.partition"]), int(headers["aiaas.origin.offset"]))
        assert origin not in by_origin, f"two dead letters for {origin}"
        by_origin[origin] = (record, headers)
    assert set(by_origin) == set(hostile), "every hostile message, and only those, is dead-lettered"
    for origin, message in hostile.items():
        record, headers = by_origin[origin]
        assert headers["aiaas.error.type"].decode() == message.error_type, (message.name, headers)
        assert record.key == message.key or (record.key is None and "aiaas.dlq.key.dropped_bytes" in headers), (
            message.name)  # the original key, unless too long to send again

    answers = {}
    for record in results:
        result = decode_result(record.value, max_bytes)
        assert result.job_id not in answers, f"two results for {result.job_id[:200]!r}"
        answers[result.job_id] = result
    not_ok = [job_id for job_id in good_ids if job_id not in answers or answers[job_id].status != "ok"]
    assert not not_ok, f"good jobs without an ok result: {not_ok}"
    for message in known:
        result = answers[message.expected_job_id]
        assert result.status == "error" and result.error.type == message.error_type, message.name
    assert len(answers) == len(good_ids) + len(known)  # nothing for a message without a job id

    growth = rss_after - rss_before
    print(f"service RSS {rss_before / 1024:.0f} MiB -> {rss_after / 1024:.0f} MiB over {len(hostile)} hostile messages")
    assert growth < RSS_GROWTH_BOUND_KIB, f"RSS grew by {growth / 1024:.0f} MiB"
