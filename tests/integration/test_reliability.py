"""Retries, idempotency and exactly-once delivery of the vision service on the real broker."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job
from aiaas.tracing.span_store import job_trace, load_spans
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import digit_jobs

pytestmark = pytest.mark.integration


async def read_all(settings, topic: str, *, settle_s: float = 2.0, timeout: float = 90, until=None) -> list:
    """Every committed record on `topic`, read until `until(records)` holds (or nothing new came for settle_s)."""
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    await consumer.start()
    records, deadline, quiet_since = [], time.time() + timeout, time.time()
    try:
        while time.time() < deadline:
            fetched = [r for batch in (await consumer.getmany(timeout_ms=300)).values() for r in batch]
            records.extend(fetched)
            if fetched:
                quiet_since = time.time()
            if until is not None and until(records) and time.time() - quiet_since >= settle_s:
                break
            if until is None and time.time() - quiet_since >= settle_s:
                break
    finally:
        await consumer.stop()
    return records


async def publish(settings, topic: str, jobs: list[Job]) -> None:
    producer = AIOKafkaProducer(**settings.connection_kwargs(), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*(producer.send_and_wait(topic, encode(j), key=j.job_id.encode()) for j in jobs))
    finally:
        await producer.stop()


@pytest.fixture
def flaky_service(service_env, vision_registry, tmp_path):
    env = service_env | {"AIAAS_VISION_MAX_ATTEMPTS": "3", "AIAAS_VISION_RETRY_BACKOFF_MS": "300"}
    service = ServiceProcess(env, tmp_path / "flaky.log", "vision", module="tests.integration.flaky_vision")
    yield service
    service.stop()


async def test_a_failing_job_is_retried_with_backoff_while_the_others_flow_and_gives_up_after_max_attempts(
        kafka_settings, flaky_service, topic_prefix, vision_registry):
    flaky_service.start()
    image = digit_jobs(1)[0][0]
    recovers = Job(job_id="recovers", model="vision", inputs={"image": image}, attributes={"fail_times": "2"})
    gives_up = Job(job_id="gives-up", model="vision", inputs={"image": image}, attributes={"fail_times": "99"})
    others = [Job(job_id=f"ok-{i}", model="vision", inputs={"image": image}) for i in range(200)]
    started = time.time()
    await publish(kafka_settings, f"{topic_prefix}.vision.infer", [recovers, gives_up])
    await publish(kafka_settings, f"{topic_prefix}.vision.infer", others)

    wanted = {j.job_id for j in [recovers, gives_up, *others]}
    records = await read_all(kafka_settings, f"{topic_prefix}.vision.results",
                             until=lambda rs: {r.key.decode() for r in rs} >= wanted, settle_s=0.5)
    results = {decode_result(r.value, 1 << 20).job_id: (decode_result(r.value, 1 << 20), r.timestamp / 1000)
               for r in records}
    assert results["recovers"][0].status == "ok"
    assert results["gives-up"][0].status == "error"
    assert "gave up after 3 attempts" in results["gives-up"][0].error.message
    assert all(results[j.job_id][0].status == "ok" for j in others)
    # Backoff 0.3 s then 0.6 s: the retried job ends ≥ 0.9 s after it started; the others never waited for it.
    assert results["recovers"][1] - started >= 0.9
    assert max(results[j.job_id][1] for j in others) < results["recovers"][1]

    retries = await read_all(kafka_settings, f"{topic_prefix}.vision.retry", settle_s=0.5)
    attempts = Counter((r.key.decode(), dict(r.headers)["aiaas.attempt"].decode()) for r in retries)
    assert attempts == {("recovers", "2"): 1, ("recovers", "3"): 1, ("gives-up", "2"): 1, ("gives-up", "3"): 1}
    dead = [r for r in await read_all(kafka_settings, f"{topic_prefix}.dlq", settle_s=0.5) if r.key == b"gives-up"]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["aiaas.attempts"] == b"3" and headers["aiaas.error.type"] == b"ModelFailure"
    assert headers["aiaas.origin.topic"] == f"{topic_prefix}.vision.infer".encode()

    # One trace: process infer → send retry → process retry → send retry → process retry → send results.
    span_dir = vision_registry.root.parent / "spans"
    deadline = time.time() + 10
    while True:
        spans = [s for s in job_trace(load_spans(span_dir), "recovers") if s.service == "aiaas-vision"]
        names = Counter(s.name for s in spans)
        if names[f"process {topic_prefix}.vision.retry"] >= 2 and names[f"send {topic_prefix}.vision.results"]:
            break
        assert time.time() < deadline, names
        await asyncio.sleep(0.25)
    hops = [s for s in spans if s.name.startswith(("process ", "send "))]  # batch spans are their own traces, linked
    assert len({s.trace_id for s in hops}) == 1
    assert names[f"send {topic_prefix}.vision.retry"] == 2


async def test_a_job_id_seen_again_after_a_restart_gets_the_same_outcome(kafka_settings, vision_service, topic_prefix):
    vision_service.start()
    job = Job(job_id="once-only", model="vision", inputs={"image": digit_jobs(1)[0][0]})
    async with AiaasClient(kafka_settings) as client:
        first = await (await client.submit_job(job)).result(timeout=30)
    vision_service.stop()
    vision_service.start()  # remembers the outcomes at the tail of its results topic
    await publish(kafka_settings, f"{topic_prefix}.vision.infer", [job])
    records = await read_all(kafka_settings, f"{topic_prefix}.vision.results",
                             until=lambda rs: len(rs) >= 2, settle_s=0.2, timeout=30)
    assert len(records) == 2 and records[0].value == records[1].value  # the same bytes: completed_at included
    assert decode_result(records[1].value, 1 << 20).completed_at == first.completed_at
    assert "1 repeated job ids answered from memory" in _stop_log(vision_service)


def _stop_log(service: ServiceProcess) -> str:
    service.stop()
    return service.log_text()


@pytest.mark.slow
async def test_exactly_once_mode_leaves_one_result_per_job_through_kill_9(kafka_settings, service_env, vision_registry,
                                                                        topic_prefix, tmp_path):
    env = service_env | {"AIAAS_VISION_DELIVERY": "exactly-once", "AIAAS_VISION_INSTANCE_ID": "replica-0"}
    service = ServiceProcess(env, tmp_path / "eos.log", "vision").start()
    image = digit_jobs(1)[0][0]
    jobs = [Job(job_id=f"e{i}", model="vision", inputs={"image": image}) for i in range(3000)]
    results_topic = f"{topic_prefix}.vision.results"
    try:
        await publish(kafka_settings, f"{topic_prefix}.vision.infer", jobs)
        for _ in range(2):  # kill -9 mid-stream, twice; the restart (same instance id) fences and goes on
            await asyncio.sleep(0.7)
            service.signal(signal.SIGKILL)
            service.start()
        records = await read_all(kafka_settings, results_topic, until=lambda rs: len(rs) >= len(jobs), timeout=120)
    finally:
        service.stop()
    counts = Counter(r.key.decode() for r in records)
    assert set(counts) == {j.job_id for j in jobs}
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:10]
    assert "exactly-once as " in service.log_text() and "transactions" in service.log_text()
