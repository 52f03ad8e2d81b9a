"""Memory soak: a service answering large text results stays flat in resident memory.

Round after round of jobs with large inputs and large, distinct results go through the real
service on the real broker. Each round is more than its outcome memory's byte budget, so without
a byte bound the memory would keep every result (idempotency_window alone allows 20,000); with
one, resident memory after the first round stays where it was.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job
from tests.integration.conftest import ServiceProcess
from tests.integration.test_hostile_input import rss_kib

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 4
JOBS_PER_ROUND = 500
INPUT_CHARS = 16 * 1024
RESULT_BYTES = 64 * 1024
BUDGET = 8 * 1024 * 1024  # outcome memory and in-flight window alike
RSS_GROWTH_BOUND_KIB = 24 * 1024
"""What resident memory may grow by after the first round; every later round passes ~31 MiB of results through the
outcome memory, so one that kept them would grow by ~94 MiB."""


@pytest.fixture
def large_text_service(service_env, tmp_path, request):
    env = service_env | {
        "AIAAS_TEXT_SOAK_RESULT_BYTES": str(RESULT_BYTES),
        "AIAAS_TEXT_OUTCOME_MEMORY_BYTES": str(BUDGET),
        "AIAAS_TEXT_MAX_IN_FLIGHT_BYTES": str(BUDGET),
        "AIAAS_TEXT_MODEL_INSTANCES": "1",
    }
    service = ServiceProcess(env, tmp_path / "large-text.log", "text", module="tests.integration.large_text_service")
    yield service
    service.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(service.log_text()[-5000:])


async def test_resident_memory_stays_flat_while_large_text_results_stream_through(kafka_settings, large_text_service,
                                                                                  topic_prefix):
    service = large_text_service.start()
    pid = service.proc.pid
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all", linger_ms=5,
                                max_request_size=kafka_settings.max_message_bytes)
    results = AIOKafkaConsumer(f"{topic_prefix}.text.results", **kafka_settings.connection_kwargs(), group_id=None,
                               auto_offset_reset="earliest", max_partition_fetch_bytes=kafka_settings.max_message_bytes)
    await producer.start()
    await results.start()
    answered: set[str] = set()
    samples: list[int] = []
    try:
        for round_ in range(ROUNDS):
            ids = [f"r{round_}-{i}-{uuid.uuid4().hex[:8]}" for i in range(JOBS_PER_ROUND)]
            jobs = [Job(job_id=i, model="text", inputs={"text": (i + " ") * (INPUT_CHARS // (len(i) + 1))})
                    for i in ids]
            await asyncio.gather(*[await producer.send(f"{topic_prefix}.text.infer", encode(job),
                                                       key=job.job_id.encode()) for job in jobs])
            deadline = time.monotonic() + 120
            while not answered.issuperset(ids):
                assert time.monotonic() < deadline, f"round {round_}: {len(set(ids) - answered)} jobs unanswered"
                for batch in (await results.getmany(timeout_ms=500)).values():
                    answered.update(record.key.decode() for record in batch)
            await asyncio.sleep(1)  # let the last batch's buffers go
            samples.append(rss_kib(pid))
    finally:
        await results.stop()
        await producer.stop()
    print(f"service RSS after each round of {JOBS_PER_ROUND} jobs ({RESULT_BYTES // 1024} KiB results): "
          f"{[s // 1024 for s in samples]} MiB")
    assert max(samples[1:]) - samples[0] < RSS_GROWTH_BOUND_KIB, samples
    assert service.proc.poll() is None
