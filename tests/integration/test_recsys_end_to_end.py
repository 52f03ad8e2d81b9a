"""The recsys service as its own process on the real broker: both tasks, the fallback, traces, bad jobs → DLQ."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job
from aiaas.recsys.data import load_split
from aiaas.recsys.runtime import RecsysRuntime
from aiaas.tracing.span_store import job_trace, load_spans
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def recsys_service(service_env, recsys_registry, tmp_path, request):
    service = ServiceProcess(service_env, tmp_path / "recsys.log", model="recsys")
    yield service.start()
    service.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(service.log_text()[-5000:])


def sample_requests() -> list[tuple[str, dict]]:
    """Held-out users (both ways of treating seen items), a user the model never saw, and similar items."""
    users = sorted(load_split().held_out())[:40]
    requests = [("recommend", {"user_id": u, "k": 10}) for u in users]
    requests += [("recommend", {"user_id": u, "k": 5, "exclude_seen": False}) for u in users[:5]]
    requests += [("recommend", {"user_id": 10**6, "k": 10})]
    requests += [("similar_items", {"item_id": i, "k": 8}) for i in range(0, 400, 40)]
    return requests


async def test_results_through_kafka_equal_the_runtime_in_process(kafka_settings, recsys_service, recsys_registry):
    requests = sample_requests()
    async with AiaasClient(kafka_settings) as client:
        handles = await asyncio.gather(*(client.submit("recsys", inputs, task=task) for task, inputs in requests))
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert [r.job_id for r in results] == [h.job_id for h in handles]
    version = str(recsys_registry.resolve("recsys", "production").version)
    assert all(r.status == "ok" and r.model_version == version for r in results)

    local = RecsysRuntime.from_registry(recsys_registry, "production", providers="cpu")
    expected = local.infer([local.prepare(Job(job_id="x", model="recsys", task=t, inputs=i)) for t, i in requests])
    for result, want, (task, inputs) in zip(results, expected, requests, strict=True):
        assert result.outputs["strategy"] == want["strategy"], (task, inputs)
        assert result.outputs["items"].to_numpy().tolist() == want["items"].to_numpy().tolist(), (task, inputs)
        np.testing.assert_allclose(result.outputs["scores"].to_numpy(), want["scores"].to_numpy(), rtol=1e-5)
    assert {r.outputs["strategy"] for r in results} == {"collaborative", "popularity", "item_cosine"}
    assert max(r.timings.batch_size for r in results) > 1  # a burst is batched


async def test_one_trace_runs_from_the_client_through_the_recsys_service(kafka_settings, recsys_service,
                                                                          recsys_registry, spans):
    async with AiaasClient(kafka_settings) as client:
        handle = await client.submit("recsys", {"user_id": 3}, task="recommend")
        await handle.result(timeout=30)
    ours = [s for s in spans.get_finished_spans() if s.attributes.get("aiaas.job.id") == handle.job_id]
    (send,) = [s for s in ours if s.name.startswith("send")]
    (receipt,) = [s for s in ours if s.name.startswith("process")]
    trace_id = f"{send.context.trace_id:032x}"

    span_dir, deadline, stored = recsys_registry.root.parent / "spans", time.time() + 10, []
    while len(stored) < 3 and time.time() < deadline:  # the service exports spans every 0.5 s
        await asyncio.sleep(0.25)
        stored = [s for s in job_trace(load_spans(span_dir), handle.job_id) if s.service == "aiaas-recsys"]
    (process,) = [s for s in stored if s.name.startswith("process ") and s.name.endswith(".recsys.infer")]
    (result_send,) = [s for s in stored if s.name.startswith("send ") and s.name.endswith(".recsys.results")]
    (batch,) = [s for s in stored if s.name == "infer recsys"]
    assert process.trace_id == trace_id and process.parent_id == f"{send.context.span_id:016x}"
    assert process.kind == "CONSUMER" and process.attributes["messaging.consumer.group.name"].endswith(".recsys")
    assert result_send.trace_id == trace_id and result_send.parent_id == process.span_id
    assert process.span_id in [span_id for _, span_id in batch.links]
    assert f"{receipt.context.trace_id:032x}" == trace_id and f"{receipt.parent.span_id:016x}" == result_send.span_id


async def test_bad_recsys_jobs_go_to_the_dlq_and_the_next_job_is_served(kafka_settings, recsys_service, topic_prefix):
    infer = f"{topic_prefix}.recsys.infer"
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await producer.start()
    try:
        garbage = await producer.send_and_wait(infer, b"\xc1 not msgpack", key=b"garbage")
        for bad in (Job(job_id="no-such-task", model="recsys", task="rank", inputs={"user_id": 1}),
                    Job(job_id="k-too-big", model="recsys", task="recommend", inputs={"user_id": 1, "k": 10_000})):
            await producer.send_and_wait(infer, encode(bad), key=bad.job_id.encode())
    finally:
        await producer.stop()
    async with AiaasClient(kafka_settings) as client:
        good = await (await client.submit("recsys", {"item_id": 7}, task="similar_items")).result(timeout=30)
    assert good.status == "ok" and good.outputs["strategy"] == "item_cosine"

    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=3)
    headers = {r.key: dict(r.headers) for r in dead}
    assert set(headers) == {b"garbage", b"no-such-task", b"k-too-big"}
    assert headers[b"garbage"]["aiaas.error.type"] == b"UndecodableMessage"
    assert headers[b"garbage"]["aiaas.origin.offset"] == str(garbage.offset).encode()
    assert headers[b"no-such-task"]["aiaas.error.type"] == headers[b"k-too-big"]["aiaas.error.type"] == b"InvalidJob"
    assert [r.value for r in dead if r.key == b"garbage"] == [b"\xc1 not msgpack"]

    results = {decode_result(r.value, 1 << 20).job_id: decode_result(r.value, 1 << 20)
               for r in await read_topic(kafka_settings, f"{topic_prefix}.recsys.results", expected=4)}
    assert {results[j].status for j in ("garbage", "no-such-task", "k-too-big")} == {"error"}
    assert "recommend, similar_items" in results["no-such-task"].error.message
    assert "1..100" in results["k-too-big"].error.message
