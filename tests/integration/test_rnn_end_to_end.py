"""The rnn service and trainer as their own processes on the real broker: next items, traces, bad jobs → DLQ,
a training job on a session file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.registry.store import Registry
from aiaas.rnn.runtime import RnnRuntime
from aiaas.rnn.sessions import SessionsConfig, generate_sessions, load_split, next_item_examples
from aiaas.rnn.trainer import TrainParams, build
from aiaas.tracing.span_store import job_trace, load_spans
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def rnn_service(service_env, rnn_registry, tmp_path, request):
    service = ServiceProcess(service_env, tmp_path / "rnn.log", model="rnn")
    yield service.start()
    service.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(service.log_text()[-5000:])


def sample_requests() -> list[dict]:
    """Prefixes of held-out sessions of every length (short and long in one burst), both ways of treating seen
    items, and a few k."""
    prefixes, _ = next_item_examples(load_split().test)
    picks = np.random.default_rng(0).choice(len(prefixes), size=60, replace=False)
    requests: list[dict] = [{"items": Tensor.from_numpy(prefixes[i]), "k": 10} for i in picks]
    requests += [{"items": Tensor.from_numpy(prefixes[i]), "k": 25, "exclude_seen": False} for i in picks[:5]]
    requests += [{"items": Tensor.from_numpy(np.arange(50, dtype=np.int64)), "k": 3}]  # the longest allowed
    return requests


async def test_results_through_kafka_equal_the_runtime_in_process(kafka_settings, rnn_service, rnn_registry):
    requests = sample_requests()
    async with AiaasClient(kafka_settings) as client:
        handles = await asyncio.gather(*(client.submit("rnn", inputs, task="next_items") for inputs in requests))
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert [r.job_id for r in results] == [h.job_id for h in handles]
    version = str(rnn_registry.resolve("rnn", "production").version)
    assert all(r.status == "ok" and r.model_version == version for r in results)

    local = RnnRuntime.from_registry(rnn_registry, "production", providers="cpu")
    expected = local.infer([local.prepare(Job(job_id="x", model="rnn", task="next_items", inputs=i))
                            for i in requests])
    for result, want, inputs in zip(results, expected, requests, strict=True):
        assert result.outputs["items"].to_numpy().tolist() == want["items"].to_numpy().tolist(), inputs
        np.testing.assert_allclose(result.outputs["scores"].to_numpy(), want["scores"].to_numpy(), rtol=1e-5)
    assert [len(r.outputs["items"].to_numpy()) for r in results] == [inputs["k"] for inputs in requests]
    assert max(r.timings.batch_size for r in results) > 1  # a burst is batched


async def test_one_trace_runs_from_the_client_through_the_rnn_service(kafka_settings, rnn_service, rnn_registry,
                                                                      spans):
    async with AiaasClient(kafka_settings) as client:
        handle = await client.submit("rnn", {"items": Tensor.from_numpy(np.array([3, 17, 42]))}, task="next_items")
        await handle.result(timeout=30)
    ours = [s for s in spans.get_finished_spans() if s.attributes.get("aiaas.job.id") == handle.job_id]
    (send,) = [s for s in ours if s.name.startswith("send")]
    (receipt,) = [s for s in ours if s.name.startswith("process")]
    trace_id = f"{send.context.trace_id:032x}"

    span_dir, deadline, stored = rnn_registry.root.parent / "spans", time.time() + 10, []
    while len(stored) < 3 and time.time() < deadline:  # the service exports spans every 0.5 s
        await asyncio.sleep(0.25)
        stored = [s for s in job_trace(load_spans(span_dir), handle.job_id) if s.service == "aiaas-rnn"]
    (process,) = [s for s in stored if s.name.startswith("process ") and s.name.endswith(".rnn.infer")]
    (result_send,) = [s for s in stored if s.name.startswith("send ") and s.name.endswith(".rnn.results")]
    (batch,) = [s for s in stored if s.name == "infer rnn"]
    assert process.trace_id == trace_id and process.parent_id == f"{send.context.span_id:016x}"
    assert process.kind == "CONSUMER" and process.attributes["messaging.consumer.group.name"].endswith(".rnn")
    assert result_send.trace_id == trace_id and result_send.parent_id == process.span_id
    assert process.span_id in [span_id for _, span_id in batch.links]
    assert f"{receipt.context.trace_id:032x}" == trace_id and f"{receipt.parent.span_id:016x}" == result_send.span_id


async def test_bad_rnn_jobs_go_to_the_dlq_and_the_next_job_is_served(kafka_settings, rnn_service, topic_prefix):
    infer = f"{topic_prefix}.rnn.infer"
    bad_jobs = (
        Job(job_id="no-such-task", model="rnn", task="recommend", inputs={"items": Tensor.from_numpy(np.arange(3))}),
        Job(job_id="unknown-item", model="rnn", task="next_items",
            inputs={"items": Tensor.from_numpy(np.array([400]))}),
        Job(job_id="too-long", model="rnn", task="next_items", inputs={"items": Tensor.from_numpy(np.arange(51))}),
        Job(job_id="float-items", model="rnn", task="next_items",
            inputs={"items": Tensor.from_numpy(np.array([1.5, 2.0]))}),
    )
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await producer.start()
    try:
        garbage = await producer.send_and_wait(infer, b"\xc1 not msgpack", key=b"garbage")
        for bad in bad_jobs:
            await producer.send_and_wait(infer, encode(bad), key=bad.job_id.encode())
    finally:
        await producer.stop()
    async with AiaasClient(kafka_settings) as client:
        good = await (await client.submit("rnn", {"items": Tensor.from_numpy(np.array([7, 8]))},
                                          task="next_items")).result(timeout=30)
    assert good.status == "ok" and len(good.outputs["items"].to_numpy()) == 10

    keys = {b"garbage", *(bad.job_id.encode() for bad in bad_jobs)}
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=len(keys))
    headers = {r.key: dict(r.headers) for r in dead}
    assert set(headers) == keys
    assert headers[b"garbage"]["aiaas.error.type"] == b"UndecodableMessage"
    assert headers[b"garbage"]["aiaas.origin.offset"] == str(garbage.offset).encode()
    assert {headers[bad.job_id.encode()]["aiaas.error.type"] for bad in bad_jobs} == {b"InvalidJob"}

    results = {decode_result(r.value, 1 << 20).job_id: decode_result(r.value, 1 << 20)
               for r in await read_topic(kafka_settings, f"{topic_prefix}.rnn.results", expected=len(keys) + 1)}
    assert {results[key.decode()].status for key in keys} == {"error"}
    assert "next_items" in results["no-such-task"].error.message
    assert "0..399" in results["unknown-item"].error.message
    assert "1..50" in results["too-long"].error.message
    assert "integer tensor" in results["float-items"].error.message


# --- a training job -----------------------------------------------------------------------------------

SMALL = SessionsConfig(n_sessions=2000, seed=11)


@pytest.fixture
def home(tmp_path) -> Registry:
    """A registry of this test's own with a small rnn v1 (small sessions, a small GRU: a few seconds)."""
    registry = Registry(tmp_path / "home" / "registry")
    build(registry, TrainParams(dim=32, hidden_size=64, epochs=3, learning_rate=0.02, batch_size=128), SMALL)
    return registry


async def test_a_training_job_on_a_session_file_is_not_promoted_until_a_person_does_and_then_it_is_served(
        kafka_settings, service_env, home, tmp_path, topic_prefix):
    data = home.root.parent / "data"  # the trainer's default data root
    data.mkdir()
    sessions = generate_sessions(dataclasses.replace(SMALL, n_sessions=400, seed=3)).as_lists()
    (data / "sessions.jsonl").write_text("\n".join(json.dumps({"items": s}) for s in sessions))
    (data / "short.jsonl").write_text("\n".join(json.dumps({"items": [1]}) for _ in range(60)))
    env = service_env | {"AIAAS_HOME": str(home.root.parent)}
    service = ServiceProcess(env, tmp_path / "rnn.log", model="rnn").start()
    training = ServiceProcess(env, tmp_path / "trainer.log", "training", "rnn").start()
    session = {"items": Tensor.from_numpy(np.array(sessions[0][:3], np.int64))}
    try:
        async with AiaasClient(kafka_settings) as client:
            bad = await client.train("rnn", {"data_uri": (data / "short.jsonl").as_uri()})
            good = await client.train("rnn", {"data_uri": (data / "sessions.jsonl").as_uri(), "epochs": 2,
                                              "hidden_size": 32, "dim": 16})
            events = [event async for event in good.events(timeout=120)]
            failed = await bad.result(timeout=60)
            before = await (await client.submit("rnn", session, task="next_items")).result(timeout=30)
            # A person promotes it (`aiaas models promote`): the running service switches between two batches.
            promoted = subprocess.run([str(Path(sys.executable).with_name("aiaas")), "models", "promote", "rnn", "v2"],
                                      env=env, capture_output=True, text=True, timeout=60)
            deadline, after = time.time() + 30, before
            while after.model_version != "2" and time.time() < deadline:
                await asyncio.sleep(0.5)
                after = await (await client.submit("rnn", session, task="next_items")).result(timeout=30)
    finally:
        service.stop()
        training.stop()
    assert promoted.returncode == 0 and "rnn production: v1 → v2" in promoted.stdout, promoted.stderr
    assert before.model_version == "1" and after.status == "ok" and after.model_version == "2"
    assert failed.status == "failed" and "at least 2" in failed.error.message
    statuses = [e.status for e in events]
    assert statuses[0] == "accepted" and statuses[-1] == "succeeded", events[-1]
    assert [e.progress.epoch for e in events if e.status == "running"] == [1, 2]
    assert {e.progress.metric_name for e in events if e.status == "running"} == {"recall_at_10"}
    assert events[-1].outputs["version"] == 2 and "production" not in events[-1].outputs["aliases"]
    version = home.resolve("rnn", "v2")
    assert version.params["scored_on"] == "job_data" and version.params["hidden_size"] == 32
    # Scored on its own data, it was never promoted by itself (the event's aliases, and v1 answered until a person
    # promoted it); production is v2 since `aiaas models promote`.
    assert home.resolve("rnn", "production").version == 2
    dead = await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=1)
    assert [r.key for r in dead] == [bad.job_id.encode()]
