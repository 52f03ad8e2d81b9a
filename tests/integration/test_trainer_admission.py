"""The trainer's admission on the real broker: hostile headers, records aiokafka cannot parse, and tenants' topics.

A training job with a null `traceparent` header ends `failed` (InvalidHeaders) with a dead letter; a record the
Kafka client cannot parse is dead-lettered by its coordinates; the good job queued right behind each on the same
partition trains, with the trainer alive throughout. A tenant's training job on `train.alice` is answered on
`results.alice`, and one naming another tenant is refused there.
"""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Result
from aiaas.contract.topics import ModelTopics
from aiaas.registry.store import Registry
from aiaas.vision.trainer import TrainParams, build
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import read_topic
from tests.integration.unparseable import publish_unparseable

pytestmark = pytest.mark.integration

_FINAL = ("succeeded", "failed")


@pytest.fixture
def env(service_env, tmp_path) -> dict[str, str]:
    """A registry of this test's own, with a quickly trained vision v1 as `production`."""
    registry = Registry(tmp_path / "home" / "registry")
    build(registry, TrainParams(epochs=3))
    return service_env | {"AIAAS_HOME": str(registry.root.parent)}


@pytest.fixture
def trainer(env, tmp_path, request):
    process = ServiceProcess(env, tmp_path / "trainer.log", "training", "vision")
    yield process.start()
    alive = process.proc.poll() is None
    process.stop()
    if not alive or (hasattr(request.node, "rep_call") and request.node.rep_call.failed):
        print(process.log_text()[-6000:])
    assert alive, "the trainer exited during the test"


def train_job(job_id: str, **fields) -> bytes:
    return encode(Job(job_id=job_id, model="vision", kind="train", inputs={"epochs": 1}, **fields))


async def final_events(settings, topic: str, job_ids: set[str], timeout: float = 120) -> dict[str, Result]:
    """The final event (succeeded/failed) of each of `job_ids` on `topic`, read from its beginning."""
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    finals: dict[str, Result] = {}
    deadline = time.time() + timeout
    try:
        while not job_ids <= finals.keys() and time.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    result = decode_result(record.value, settings.max_message_bytes)
                    if result.status in _FINAL:
                        finals[result.job_id] = result
    finally:
        await consumer.stop()
    return finals


async def test_a_null_traceparent_and_an_unparseable_record_are_dead_lettered_and_the_next_jobs_train(
        kafka_settings, trainer, topic_prefix):
    topics = ModelTopics.of("vision", topic_prefix)
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:  # one partition, in this order: each bad record has a good job queued right behind it
        await producer.send_and_wait(topics.train, train_job("null-traceparent"), key=b"null-traceparent",
                                     headers=[("traceparent", None)], partition=0)
        await producer.send_and_wait(topics.train, train_job("after-null-traceparent"),
                                     key=b"after-null-traceparent", partition=0)
        await publish_unparseable(kafka_settings, topics.train, key="unparseable", value=train_job("unparseable"))
        await producer.send_and_wait(topics.train, train_job("after-unparseable"), key=b"after-unparseable",
                                     partition=0)
    finally:
        await producer.stop()
    finals = await final_events(kafka_settings, topics.results,
                                {"null-traceparent", "after-null-traceparent", "after-unparseable"})
    assert finals["null-traceparent"].status == "failed", finals
    assert finals["null-traceparent"].error.type == "InvalidHeaders"
    assert finals["after-null-traceparent"].status == "succeeded", finals["after-null-traceparent"]
    assert finals["after-unparseable"].status == "succeeded", finals["after-unparseable"]
    assert "unparseable" not in finals  # it was never read: only its coordinates are known

    dead = {dict(r.headers)["aiaas.error.type"].decode(): dict(r.headers)
            for r in await read_topic(kafka_settings, f"{topic_prefix}.dlq", expected=2)}
    assert dead.keys() == {"InvalidHeaders", "UnparseableRecord"}, dead
    assert dead["InvalidHeaders"]["aiaas.job.id"] == b"null-traceparent"
    unparseable = dead["UnparseableRecord"]
    assert (unparseable["aiaas.origin.topic"], unparseable["aiaas.origin.partition"],
            unparseable["aiaas.origin.offset"]) == (topics.train.encode(), b"0", b"2")
    assert "cannot be parsed" in trainer.log_text()


async def test_a_tenants_training_job_is_answered_on_its_own_results_topic(kafka_settings, trainer, topic_prefix):
    topics = ModelTopics.of("vision", topic_prefix)
    alice = kafka_settings.model_copy(update={"tenant": "alice"})
    async with AiaasClient(alice) as client:  # creates train.alice: the trainer finds it within ~10 s
        handle = await client.train("vision", {"epochs": 1})
        events = [event async for event in handle.events(timeout=120)]
    assert [e.status for e in events][0] == "accepted" and events[-1].status == "succeeded", events

    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:  # alice's topic, but the job names bob: refused, and answered on alice's results topic
        await producer.send_and_wait(topics.tenant_train("alice"), train_job("as-bob", tenant="bob"), key=b"as-bob")
    finally:
        await producer.stop()
    on_alice = await final_events(kafka_settings, topics.tenant_results("alice"), {handle.job_id, "as-bob"})
    assert on_alice[handle.job_id].status == "succeeded"
    assert on_alice["as-bob"].status == "failed" and on_alice["as-bob"].error.type == "InvalidJob"
    assert await final_events(kafka_settings, topics.results, {handle.job_id}, timeout=3) == {}
    published = await read_topic(kafka_settings, topics.tenant_train("alice"), expected=2, timeout=10)
    assert handle.job_id.encode() in {r.key for r in published}  # the client published to alice's train topic
