"""The vision service as its own process on the real broker: results, accuracy, traces, DLQ, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.tracing.span_store import job_trace, load_spans
from aiaas.vision.data import load_split

pytestmark = pytest.mark.integration


def digit_jobs(n: int):
    split = load_split()
    return [(Tensor.from_numpy(split.test_x[i][0]), int(split.test_y[i])) for i in range(n)]


async def read_topic(settings, topic: str, expected: int, timeout: float = 60) -> list:
    """Every record on `topic` from the beginning, until `expected` are there or time runs out."""
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    records, deadline = [], time.time() + timeout
    try:
        while len(records) < expected and time.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_jobs_get_results_across_processes_with_held_out_accuracy(kafka_settings, vision_service):
    vision_service.start()
    samples = digit_jobs(300)
    async with AiaasClient(kafka_settings) as client:
        handles = await asyncio.gather(*(client.submit("vision", {"image": img}) for img, _ in samples))
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert [r.job_id for r in results] == [h.job_id for h in handles]
    assert all(r.status == "ok" and r.model_version == "1" for r in results)
    accuracy = np.mean([r.outputs["label"] == label for r, (_, label) in zip(results, samples, strict=True)])
    assert accuracy >= 0.95
    assert max(r.timings.batch_size for r in results) > 1  # a burst is batched


async def test_one_trace_covers_client_and_worker_spans(kafka_settings, vision_service, vision_registry, spans):
    vision_service.start()
    async with AiaasClient(kafka_settings) as client:
        handle = await client.submit("vision", {"image": digit_jobs(1)[0][0]})
        await handle.result(timeout=30)
    ours = [s for s in spans.get_finished_spans() if s.attributes.get("aiaas.job.id") == handle.job_id]
    (send,) = [s for s in ours if s.name.startswith("send")]
    (receipt,) = [s for s in ours if s.name.startswith("process")]
    trace_id = f"{send.context.trace_id:032x}"

    span_dir = vision_registry.root.parent / "spans"
    deadline = time.time() + 10
    while True:  # the service exports in batches every 0.5 s
        stored = [s for s in job_trace(load_spans(span_dir), handle.job_id) if s.service == "aiaas-vision"]
        if len(stored) >= 3 or time.time() > deadline:
            break
        await asyncio.sleep(0.25)
    (process,) = [s for s in stored if s.name.startswith("process ") and s.name.endswith(".vision.infer")]
    (result_send,) = [s for s in stored if s.name.startswith("send ") and s.name.endswith(".vision.results")]
    (batch,) = [s for s in stored if s.name == "infer vision"]
    assert process.trace_id == trace_id and process.parent_id == f"{send.context.span_id:016x}"
    assert process.kind == "CONSUMER" and process.attributes["messaging.consumer.group.name"].endswith(".vision")
    assert result_send.trace_id == trace_id and result_send.parent_id == process.span_id
    assert process.span_id in [span_id for _, span_id in batch.links]
    assert f"{receipt.context.trace_id:032x}" == trace_id
    assert f"{receipt.parent.span_id:016x}" == result_send.span_id


async def test_malformed_message_goes_to_dlq_and_the_next_job_is_served(kafka_settings, vision_service, topic_prefix):
    vision_service.start()
    infer, dlq = f"{topic_prefix}.vision.infer", f"{topic_prefix}.dlq"
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await producer.start()
    try:
        bad = await producer.send_and_wait(infer, b"\xc1 definitely not msgpack", key=b"bad-job")
        await producer.send_and_wait(infer, b"\xdf\xff\xff\xff\xff", key=b"bomb-job")
        wrong = Job(job_id="nan-job", model="vision",
                    inputs={"image": Tensor.from_numpy(np.full((8, 8), np.nan, np.float32))})
        await producer.send_and_wait(infer, encode(wrong), key=b"nan-job")
    finally:
        await producer.stop()
    async with AiaasClient(kafka_settings) as client:
        good = await (await client.submit("vision", {"image": digit_jobs(1)[0][0]})).result(timeout=30)
    assert good.status == "ok"

    dead = await read_topic(kafka_settings, dlq, expected=3)
    headers = {r.key: dict(r.headers) for r in dead}
    assert set(headers) == {b"bad-job", b"bomb-job", b"nan-job"}
    assert headers[b"bad-job"]["aiaas.origin.topic"] == infer.encode()
    assert headers[b"bad-job"]["aiaas.origin.offset"] == str(bad.offset).encode()
    assert headers[b"bad-job"]["aiaas.origin.partition"] == str(bad.partition).encode()
    assert headers[b"bad-job"]["aiaas.error.type"] == b"UndecodableMessage"
    assert headers[b"nan-job"]["aiaas.error.type"] == b"InvalidJob"
    assert [r.value for r in dead if r.key == b"bad-job"] == [b"\xc1 definitely not msgpack"]

    results = {decode_result(r.value, 1 << 20).job_id: decode_result(r.value, 1 << 20)
               for r in await read_topic(kafka_settings, f"{topic_prefix}.vision.results", expected=4)}
    assert results["bad-job"].status == results["nan-job"].status == results["bomb-job"].status == "error"
    assert "finite" in results["nan-job"].error.message


async def test_a_job_larger_than_one_partition_fetch_is_answered_while_other_partitions_are_busy(
        kafka_settings, vision_service, topic_prefix):
    """The service fetches at most 1 MiB of a partition at a time (`_PARTITION_FETCH_BYTES`): a 3 MiB job must still
    come through, whole and answered once, while small jobs keep the other partitions busy (never skipped as too
    large, never waiting for them to go quiet)."""
    vision_service.start()
    infer = f"{topic_prefix}.vision.infer"
    big = np.zeros((1024, 1024, 3), np.uint8)  # 3 MiB: not a digit image, so an error result; but answered
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all", enable_idempotence=True,
                                linger_ms=2, max_request_size=kafka_settings.max_message_bytes)
    await producer.start()
    small_ids: list[str] = []
    try:
        partitions = sorted(await producer.partitions_for(infer))
        assert len(partitions) >= 2
        img = digit_jobs(1)[0][0]

        async def keep_busy() -> None:  # every partition but the first, 200 small jobs a second for 3 s
            for i in range(600):
                job = Job(job_id=f"small-{i}", model="vision", inputs={"image": img})
                small_ids.append(job.job_id)
                await producer.send(infer, encode(job), key=job.job_id.encode(),
                                    partition=partitions[1 + i % (len(partitions) - 1)])
                await asyncio.sleep(0.005)

        busy = asyncio.create_task(keep_busy())
        for n in range(2):
            await asyncio.sleep(1)
            job = Job(job_id=f"big-{n}", model="vision", inputs={"image": Tensor.from_numpy(big)})
            await producer.send_and_wait(infer, encode(job), key=job.job_id.encode(), partition=partitions[0])
        await busy
        await producer.flush()
    finally:
        await producer.stop()
    records = await read_topic(kafka_settings, f"{topic_prefix}.vision.results", expected=len(small_ids) + 2,
                               timeout=60)
    results = [decode_result(r.value, kafka_settings.max_message_bytes) for r in records]
    answered = [r.job_id for r in results]
    assert sorted(answered) == sorted([*small_ids, "big-0", "big-1"])  # each once
    big_results = [r for r in results if r.job_id.startswith("big-")]
    assert all(r.status == "error" and r.error.type == "InvalidJob" for r in big_results), big_results
    last_small = max(r.completed_at for r in results if r.job_id.startswith("small-"))
    assert all(r.completed_at < last_small for r in big_results), "a big job waited for the others to go quiet"
    assert "RecordTooLarge" not in vision_service.log_text()


@pytest.mark.slow
async def test_sigterm_mid_stream_loses_no_job(kafka_settings, vision_service, topic_prefix):
    vision_service.start()
    img = digit_jobs(1)[0][0]
    jobs = [Job(job_id=f"s{i}", model="vision", inputs={"image": img}) for i in range(3000)]
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*(producer.send_and_wait(f"{topic_prefix}.vision.infer", encode(j), key=j.job_id.encode())
                               for j in jobs[:1500]))
        await asyncio.sleep(0.3)  # let the worker get going, then stop it mid-stream
        assert vision_service.signal(signal.SIGTERM) == 0
        await asyncio.gather(*(producer.send_and_wait(f"{topic_prefix}.vision.infer", encode(j), key=j.job_id.encode())
                               for j in jobs[1500:]))
    finally:
        await producer.stop()
    before = await read_topic(kafka_settings, f"{topic_prefix}.vision.results", expected=len(jobs), timeout=3)
    assert 0 < len({r.key for r in before}) < len(jobs), "the SIGTERM should land mid-stream"
    vision_service.start()
    records = await read_topic(kafka_settings, f"{topic_prefix}.vision.results", expected=len(jobs), timeout=90)
    answered = {decode_result(r.value, 1 << 20).job_id for r in records}
    assert answered == {j.job_id for j in jobs}


async def test_result_stream_drops_duplicate_job_ids(kafka_settings, topic_prefix):
    from aiaas.contract.envelopes import Result
    from aiaas.kafka.admin import ensure_topics

    topic = f"{topic_prefix}.vision.results"
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await ensure_topics(kafka_settings, [topic])
    async with AiaasClient(kafka_settings) as client:
        await producer.start()
        try:
            for job_id in ("a", "b", "a", "c", "b"):  # a redelivered batch republishes results
                result = Result(job_id=job_id, model="vision", status="ok", outputs={"label": 1})
                await producer.send_and_wait(topic, encode(result), key=job_id.encode())
        finally:
            await producer.stop()
        seen = [r.job_id async for r in client.results("vision", from_beginning=True, idle_timeout=2)]
    assert sorted(seen) == ["a", "b", "c"]


async def test_a_full_in_flight_window_pauses_the_partitions_and_loses_nothing(kafka_settings, service_env,
                                                                              vision_registry, tmp_path, topic_prefix):
    from tests.integration.conftest import ServiceProcess

    env = service_env | {"AIAAS_VISION_MAX_BATCH": "4", "AIAAS_VISION_MAX_IN_FLIGHT": "8"}
    service = ServiceProcess(env, tmp_path / "vision.log").start()
    img = digit_jobs(1)[0][0]
    jobs = [Job(job_id=f"w{i}", model="vision", inputs={"image": img}) for i in range(1000)]
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*(producer.send_and_wait(f"{topic_prefix}.vision.infer", encode(j), key=j.job_id.encode())
                               for j in jobs))
    finally:
        await producer.stop()
    records = await read_topic(kafka_settings, f"{topic_prefix}.vision.results", expected=len(jobs), timeout=90)
    assert {decode_result(r.value, 1 << 20).job_id for r in records} == {j.job_id for j in jobs}
    assert service.signal(signal.SIGTERM) == 0
    (stopped,) = [line for line in service.log_text().splitlines() if "service stopped" in line]
    pauses = int(stopped.split("paused ")[1].split(" times")[0])
    assert pauses > 0, stopped
