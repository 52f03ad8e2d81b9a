"""The trainer's admission, with an in-memory consumer and producer: tenants from the topic, checked headers, and
records the Kafka client cannot parse.

`TrainerService.serve` runs on fakes here (the real broker: tests/integration/test_trainer_admission.py).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job
from aiaas.contract.topics import ModelTopics
from aiaas.registry.store import Registry
from aiaas.settings import KafkaSettings
from aiaas.training.attempts import AttemptCounter
from aiaas.training.protocol import Candidate
from aiaas.training.service import TrainerService
from aiaas.training.settings import TrainerSettings
from tests.fakes import FakeConsumer, Record

TOPICS = ModelTopics.of("vision", "p")
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class InstantTrainer:
    """A vision trainer that "trains" at once: its artifact names the job."""

    model, metric = "vision", "accuracy"

    def train(self, request, registry, workdir: Path, progress, stop=None) -> Candidate:
        artifact = workdir / "model.onnx"
        artifact.write_bytes(f"weights of {request.job.job_id}".encode())
        return Candidate(artifact, {"accuracy": 0.5}, {}, "0" * 64, scored_on="reference")


class FakeProducer:
    """Collects what the trainer sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, dict]] = []

    async def send_and_wait(self, topic, value, key=None, headers=None, **_):
        self.sent.append((topic, value, key, dict(headers or [])))

    def on(self, topic: str) -> list:
        return [s for s in self.sent if s[0] == topic]

    def events(self, topic: str) -> list[tuple[str, str]]:
        """(job id, status) of the events on `topic`."""
        return [(r.job_id, r.status) for r in (decode_result(s[1], 1 << 20) for s in self.on(topic))]

    def failed(self, topic: str) -> dict[str, str]:
        """Job id → error type of the `failed` events on `topic`."""
        results = (decode_result(s[1], 1 << 20) for s in self.on(topic))
        return {r.job_id: r.error.type for r in results if r.status == "failed"}


class Catalog:
    """Every topic exists but those named."""

    def __init__(self, missing: set[str] = frozenset()) -> None:
        self._missing = set(missing)

    async def missing(self, topics: set[str]) -> set[str]:
        return topics & self._missing


def train_record(offset: int, job_id: str, *, topic: str = TOPICS.train, headers=(), **fields) -> Record:
    job = Job(job_id=job_id, model="vision", kind="train", inputs={"epochs": 1}, **fields)
    return Record(topic, 0, offset, job_id.encode(), encode(job), list(headers))


def consumer_of(logs: dict[str, list[Record]]) -> FakeConsumer:
    """A FakeConsumer holding partition 0 of each topic in `logs`."""
    topics = list(logs)
    consumer = FakeConsumer({0: logs[topics[0]]}, topic=topics[0])
    for topic in topics[1:]:
        tp = TopicPartition(topic, 0)
        consumer.log[tp], consumer.offsets[tp] = list(logs[topic]), 0
    return consumer


@pytest.fixture
def service(tmp_path) -> TrainerService:
    return TrainerService(InstantTrainer(), KafkaSettings(topic_prefix="p"),
                          TrainerSettings(data_roots=[], poll_interval_s=0.01),
                          Registry(tmp_path / "registry"), AttemptCounter(tmp_path / "attempts"))


async def serve_until(service: TrainerService, consumer, producer: FakeProducer, done, catalog=None,
                      timeout: float = 30) -> None:
    task = asyncio.create_task(service.serve(consumer, producer, catalog or Catalog()))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
            assert asyncio.get_running_loop().time() < deadline, producer.sent
            await asyncio.sleep(0.02)
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)


def dead_letters(producer: FakeProducer) -> list[dict]:
    return [headers for _, _, _, headers in producer.on("p.dlq")]


def test_train_pattern_takes_the_shared_train_topic_and_every_tenants():
    pattern = re.compile(f"^(?:{TOPICS.train_pattern()})$")
    assert all(pattern.match(t) for t in ("p.vision.train", "p.vision.train.alice", "p.vision.train.b-2_x"))
    assert not any(pattern.match(t) for t in ("p.vision.infer", "p.vision.train.Alice", "p.vision.train.alice.x",
                                              "p.vision.trainx", "p.text.train.alice", "p.vision.results.alice"))


@pytest.mark.parametrize("headers", [
    [("traceparent", None)],
    [("traceparent", b"\xff\xfe junk")],
    [("aiaas.attempt", None)],
    [(f"h{i}", b"x") for i in range(3000)],
], ids=["null-traceparent", "junk-traceparent", "null-aiaas-header", "thousands"])
async def test_a_job_with_headers_that_fail_the_checks_ends_failed_with_a_dead_letter_and_the_next_one_trains(
        service, headers):
    consumer = FakeConsumer({0: [train_record(0, "bad", headers=headers), train_record(1, "good")]},
                            topic=TOPICS.train)
    producer = FakeProducer()
    await serve_until(service, consumer, producer, lambda: ("good", "succeeded") in producer.events(TOPICS.results))
    assert producer.failed(TOPICS.results) == {"bad": "InvalidHeaders"}
    (dead,) = dead_letters(producer)
    assert dead["aiaas.error.type"] == b"InvalidHeaders" and dead["aiaas.job.id"] == b"bad"
    assert consumer.last_commits() == {0: 2}
    assert [v.job_id for v in service.registry.versions("vision")] == ["good"]


async def test_the_trace_context_comes_from_checked_headers_only(service, spans):
    consumer = FakeConsumer({0: [
        train_record(0, "traced", headers=[("traceparent", TRACEPARENT)]),
        train_record(1, "refused", headers=[("traceparent", TRACEPARENT), ("aiaas.attempt", None)]),
    ]}, topic=TOPICS.train)
    producer = FakeProducer()
    await serve_until(service, consumer, producer, lambda: len(producer.events(TOPICS.results)) >= 3)
    process = {s.attributes.get("aiaas.job.id") or s.attributes["messaging.kafka.offset"]: s
               for s in spans.get_finished_spans() if s.name == f"process {TOPICS.train}"}
    assert f"{process['traced'].context.trace_id:032x}" == TRACEPARENT.decode().split("-")[1]
    assert f"{process[1].context.trace_id:032x}" != TRACEPARENT.decode().split("-")[1]
    assert process[1].parent is None


async def test_a_record_the_client_cannot_parse_is_dead_lettered_by_its_coordinates_and_the_next_job_trains(service):
    consumer = FakeConsumer({0: [train_record(0, "before"), train_record(1, "unparseable"), train_record(2, "after")]},
                            topic=TOPICS.train)
    consumer.unparseable = {(0, 1)}
    producer = FakeProducer()
    await serve_until(service, consumer, producer, lambda: ("after", "succeeded") in producer.events(TOPICS.results))
    (dead,) = dead_letters(producer)
    assert dead["aiaas.error.type"] == b"UnparseableRecord"
    assert (dead["aiaas.origin.topic"], dead["aiaas.origin.partition"], dead["aiaas.origin.offset"]) == \
        (TOPICS.train.encode(), b"0", b"1")
    assert consumer.raised >= 1 and consumer.last_commits() == {0: 3}
    assert [v.job_id for v in service.registry.versions("vision")] == ["before", "after"]


async def test_a_tenants_job_is_answered_on_its_results_topic_and_may_not_name_another_tenant(service):
    alice = TOPICS.tenant_train("alice")
    consumer = consumer_of({alice: [train_record(0, "mine", topic=alice),
                                    train_record(1, "as-alice", topic=alice, tenant="alice"),
                                    train_record(2, "as-bob", topic=alice, tenant="bob")]})
    producer = FakeProducer()
    results = TOPICS.tenant_results("alice")
    await serve_until(service, consumer, producer, lambda: "as-bob" in producer.failed(results))
    assert [e for e in producer.events(results) if e[1] in ("succeeded", "failed")] == \
        [("mine", "succeeded"), ("as-alice", "succeeded"), ("as-bob", "failed")]
    assert producer.failed(results) == {"as-bob": "InvalidJob"}
    assert producer.on(TOPICS.results) == [] and producer.on(TOPICS.tenant_results("bob")) == []
    assert [h["aiaas.error.type"] for h in dead_letters(producer)] == [b"InvalidJob"]
    assert {v.params.get("tenant") for v in service.registry.versions("vision")} == {"alice"}


async def test_a_job_id_another_tenant_used_is_trained_for_this_tenant_too(service):
    alice, bob = TOPICS.tenant_train("alice"), TOPICS.tenant_train("bob")
    consumer = consumer_of({alice: [train_record(0, "same", topic=alice)], bob: [train_record(0, "same", topic=bob)]})
    producer = FakeProducer()
    await serve_until(service, consumer, producer,
                      lambda: all(("same", "succeeded") in producer.events(TOPICS.tenant_results(t))
                                  for t in ("alice", "bob")))
    versions = service.registry.versions("vision")
    assert sorted(v.params["tenant"] for v in versions) == ["alice", "bob"]  # bob's job was not answered with alice's
    accepted = [decode_result(s[1], 1 << 20) for s in producer.sent if s[0].startswith(TOPICS.results)]
    assert [r.outputs["attempt"] for r in accepted if r.status == "accepted"] == [1, 1]


async def test_a_tenants_job_whose_results_topic_does_not_exist_leaves_only_a_dead_letter(service):
    alice = TOPICS.tenant_train("alice")
    consumer = consumer_of({alice: [train_record(0, "nowhere", topic=alice)], TOPICS.train: [train_record(0, "ok")]})
    producer = FakeProducer()
    await serve_until(service, consumer, producer, lambda: ("ok", "succeeded") in producer.events(TOPICS.results)
                      and dead_letters(producer), catalog=Catalog({TOPICS.tenant_results("alice")}))
    assert producer.on(TOPICS.tenant_results("alice")) == []
    assert [h["aiaas.error.type"] for h in dead_letters(producer)] == [b"Undeliverable"]
    assert consumer.last_commits() == {0: 1}
