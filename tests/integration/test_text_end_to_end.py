"""The text service as its own process on the real broker: the three tasks, traces, bad jobs → DLQ."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job
from aiaas.text.labelled_sentences import labelled_split
from aiaas.text.runtime import TextRuntime
from aiaas.tracing.span_store import job_trace, load_spans
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def text_service(service_env, text_registry, tmp_path):
    service = ServiceProcess(service_env, tmp_path / "text.log", model="text")
    yield service.start()
    service.stop()


async def test_every_task_answers_through_kafka_as_the_model_does_in_process(kafka_settings, text_service,
                                                                             text_registry):
    _, held_out = labelled_split()
    sample = held_out[:40]
    async with AiaasClient(kafka_settings) as client:
        embed = await client.submit("text", {"texts": ["a cup of tea", "stock prices fell"]}, task="embed")
        similar = await client.submit("text", {"left": ["It is raining hard."], "right": ["Heavy rain is falling."]},
                                      task="similarity")
        handles = await asyncio.gather(*(client.submit("text", {"texts": [s]}, task="classify") for s, _ in sample))
        embedded, scored = await embed.result(timeout=60), await similar.result(timeout=60)
        classified = await asyncio.gather(*(h.result(timeout=60) for h in handles))

    local = TextRuntime.from_registry(text_registry)
    (expected,) = local.infer([local.prepare(Job(job_id="x", model="text", task="embed",
                                                 inputs={"texts": ["a cup of tea", "stock prices fell"]}))])
    np.testing.assert_allclose(embedded.outputs["embeddings"].to_numpy(), expected["embeddings"].to_numpy(), atol=1e-5)
    assert scored.outputs["scores"].to_numpy()[0] > 0.6
    accuracy = np.mean([r.outputs["labels"] == [topic] for r, (_, topic) in zip(classified, sample, strict=True)])
    assert accuracy >= 0.85
    assert {r.model_version for r in classified} == {str(text_registry.resolve("text", "production").version)}


async def test_the_int8_graph_serves_when_the_service_is_told_to(kafka_settings, service_env, text_registry, tmp_path):
    service = ServiceProcess(service_env | {"AIAAS_TEXT_PRECISION": "int8"}, tmp_path / "text-int8.log", model="text")
    service.start()
    try:
        _, held_out = labelled_split()
        sample, texts = held_out[:30], ["a cup of tea", "stock prices fell"]
        async with AiaasClient(kafka_settings) as client:
            # Alone in its batch, as in process below: int8 activations are scaled per encoder call.
            embedded = await (await client.submit("text", {"texts": texts}, task="embed")).result(timeout=60)
            handles = await asyncio.gather(*(client.submit("text", {"texts": [s]}, task="classify") for s, _ in sample))
            classified = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    finally:
        service.stop()
    served = embedded.outputs["embeddings"].to_numpy()
    for precision, expect_match in (("int8", True), ("fp32", False)):
        local = TextRuntime.from_registry(text_registry, precision=precision)
        (expected,) = local.infer([local.prepare(Job(job_id="x", model="text", task="embed", inputs={"texts": texts}))])
        assert np.allclose(served, expected["embeddings"].to_numpy(), atol=1e-5) == expect_match, precision
    accuracy = np.mean([r.outputs["labels"] == [topic] for r, (_, topic) in zip(classified, sample, strict=True)])
    assert accuracy >= 0.85


def test_a_service_asked_for_int8_on_pytorch_stops_and_says_why(service_env, text_registry):
    env = service_env | {"AIAAS_TEXT_PRECISION": "int8", "AIAAS_TEXT_BACKEND": "torch"}
    ended = subprocess.run([sys.executable, "-m", "aiaas.text"], env=env, capture_output=True, text=True, timeout=120)
    assert ended.returncode == 2
    assert "int8 is served by ONNX Runtime: set AIAAS_TEXT_BACKEND=onnx" in ended.stderr
    assert "Traceback" not in ended.stderr


async def test_one_trace_runs_from_the_client_through_the_text_service(kafka_settings, text_service, text_registry,
                                                                       spans):
    async with AiaasClient(kafka_settings) as client:
        handle = await client.submit("text", {"texts": ["trace me"]}, task="embed")
        await handle.result(timeout=60)
    (send,) = [s for s in spans.get_finished_spans()
               if s.attributes.get("aiaas.job.id") == handle.job_id and s.name.startswith("send")]
    deadline, stored = time.time() + 10, []
    while len(stored) < 3 and time.time() < deadline:  # the service exports spans every 0.5 s
        await asyncio.sleep(0.25)
        stored = [s for s in job_trace(load_spans(text_registry.root.parent / "spans"), handle.job_id)
                  if s.service == "aiaas-text"]
    names = {s.name.split(" ")[0] + (" results" if s.name.endswith(".results") else "") for s in stored}
    assert {"process", "infer", "send results"} <= names
    assert {s.trace_id for s in stored if not s.name.startswith("infer")} == {f"{send.context.trace_id:032x}"}


async def test_bad_text_jobs_go_to_the_dlq_and_the_stream_goes_on(kafka_settings, text_service, topic_prefix):
    infer = f"{topic_prefix}.text.infer"
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(infer, b"\x92\x01", key=b"garbage")
        no_task = Job(job_id="no-task", model="text", inputs={"texts": ["hello"]})
        too_long = Job(job_id="too-long", model="text", task="embed", inputs={"texts": ["x" * 5000]})
        for job in (no_task, too_long):
            await producer.send_and_wait(infer, encode(job), key=job.job_id.encode())
    finally:
        await producer.stop()
    async with AiaasClient(kafka_settings) as client:
        good = await (await client.submit("text", {"texts": ["still served"]}, task="classify")).result(timeout=60)
    assert good.status == "ok"
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=3)
    assert {r.key for r in dead} == {b"garbage", b"no-task", b"too-long"}
    results = {decode_result(r.value, 1 << 20).job_id: decode_result(r.value, 1 << 20)
               for r in await read_topic(kafka_settings, f"{topic_prefix}.text.results", expected=4)}
    assert results["no-task"].error.type == "InvalidJob"
    assert "embed, similarity, classify" in results["no-task"].error.message
    assert "at most 2000" in results["too-long"].error.message
