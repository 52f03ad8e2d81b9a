"""Tenants end to end: a real vision service logged in as `aiaas-vision` on the SCRAM broker with ACLs enforced.

The broker, the users and `aiaas acl apply` are test_tenant_acls.py's (its module fixtures, so this module gets
a broker of its own on the same ports, 29392-29396, after or before that one). Alice and bob use `AiaasClient`
with their own logins and `AIAAS_KAFKA_TENANT`; what a client would refuse to send is sent with a plain
producer logged in as alice, which the ACLs allow on her infer topic. The service principal may write every
tenant's results topic, so only the service's own checks keep alice's jobs out of bob's stream: that is what
is tested here, with the service process alive after every test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from aiaas.client.client import AiaasClient
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Result, Tensor
from aiaas.errors import TopicNotCreated
from aiaas.registry.store import Registry
from aiaas.settings import KafkaSettings
from aiaas.vision.data import load_split
from tests.integration.conftest import ServiceProcess
from tests.integration.test_tenant_acls import (  # noqa: F401
    PASSWORDS,
    PREFIX,
    VISION,
    _as,
    acl_broker,
    applied,
)

pytestmark = pytest.mark.integration
_MAX_BYTES = KafkaSettings.model_fields["max_message_bytes"].default


def _tenant(broker: str, user: str) -> KafkaSettings:
    """`user`'s login, publishing and reading as the tenant of the same name."""
    return _as(broker, user).model_copy(update={"tenant": user})


@pytest.fixture(scope="module")
def service(acl_broker: str, applied, vision_registry: Registry, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """`python -m aiaas.vision` logged in as `aiaas-vision` (no super user), ready before the tests run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AIAAS_"))} | {
        "AIAAS_KAFKA_BOOTSTRAP_SERVERS": acl_broker, "AIAAS_KAFKA_TOPIC_PREFIX": PREFIX,
        "AIAAS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "AIAAS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "AIAAS_KAFKA_SASL_USERNAME": "aiaas-vision", "AIAAS_KAFKA_SASL_PASSWORD": PASSWORDS["aiaas-vision"],
        "AIAAS_HOME": str(vision_registry.root.parent), "AIAAS_VISION_MAX_WAIT_MS": "2", "PYTHONUNBUFFERED": "1",
    }
    process = ServiceProcess(env, tmp_path_factory.mktemp("tenant-service") / "vision.log")
    failed_before = request.session.testsfailed
    try:
        yield process.start()
        assert process.proc is not None and process.proc.poll() is None, "the service exited during the tests"
        assert process.signal() == 0, process.log_text()[-3000:]
    finally:
        process.stop()
        if request.session.testsfailed > failed_before:
            print(f"--- vision service log ---\n{process.log_text()[-6000:]}")


@pytest.fixture(scope="module")
def digits() -> dict[int, Tensor]:
    """One held-out image of each digit."""
    split = load_split()
    images: dict[int, Tensor] = {}
    for x, y in zip(split.test_x, split.test_y, strict=True):
        images.setdefault(int(y), Tensor.from_numpy(x[0]))
    return images


def _still_up(service: ServiceProcess) -> None:
    assert service.proc is not None and service.proc.poll() is None, service.log_text()[-3000:]


async def _publish_as_alice(broker: str, job: Job) -> None:
    """A job sent as alice with a plain producer onto her own infer topic, whatever its envelope says."""
    producer = AIOKafkaProducer(**_as(broker, "alice").connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(VISION.tenant_infer("alice"), encode(job),
                                                      key=job.job_id.encode()), 30)
    finally:
        await producer.stop()


async def _read_until(settings: KafkaSettings, topic: str, done: Callable[[list[ConsumerRecord]], bool],
                      timeout: float = 30) -> list[ConsumerRecord]:
    """`topic` from its beginning until `done` says so or `timeout` seconds pass."""
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=None, auto_offset_reset="earliest",
                                isolation_level="read_committed")
    await consumer.start()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(records) and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records += batch
    finally:
        await consumer.stop()
    return records


def _results(records: list[ConsumerRecord], job_id: str) -> list[Result]:
    return [decode_result(r.value, _MAX_BYTES) for r in records if r.key == job_id.encode()]


def _dead_letter_type(records: list[ConsumerRecord], job_id: str) -> list[bytes]:
    return [dict(r.headers).get("aiaas.error.type") for r in records if r.key == job_id.encode()]


async def test_alice_gets_her_result_on_her_own_results_topic(acl_broker, service, digits):
    async with AiaasClient(_tenant(acl_broker, "alice")) as alice:
        handle = await alice.submit("vision", {"image": digits[3]}, job_id="alice-first")
        result = await handle.result(timeout=60)
        assert result.status == "ok" and result.outputs["label"] == 3
        read = [r async for r in alice.results("vision", from_beginning=True, idle_timeout=3)]
    assert "alice-first" in [r.job_id for r in read if r.status == "ok"]
    records = await _read_until(_as(acl_broker, "alice"), VISION.tenant_results("alice"),
                                lambda rs: bool(_results(rs, "alice-first")))
    assert [r.status for r in _results(records, "alice-first")] == ["ok"]
    _still_up(service)


async def test_bob_cannot_read_alices_results(acl_broker, service):
    async with AiaasClient(_tenant(acl_broker, "bob")) as bob:
        with pytest.raises(TopicNotCreated) as refused:
            async for _ in bob.results("vision", topic=VISION.tenant_results("alice"), from_beginning=True,
                                       idle_timeout=3):
                pass
    assert f"{VISION.tenant_results('alice')}: TopicAuthorizationFailedError" in str(refused.value)
    assert "it may be another tenant's topic" in str(refused.value)  # not "create it": it is there, and not his
    _still_up(service)


async def test_a_job_naming_another_tenant_is_refused_and_dead_lettered(acl_broker, service, digits):
    await _publish_as_alice(acl_broker, Job(job_id="claims-bob", model="vision", inputs={"image": digits[1]},
                                            tenant="bob"))
    records = await _read_until(_as(acl_broker, "alice"), VISION.tenant_results("alice"),
                                lambda rs: bool(_results(rs, "claims-bob")))
    (result,) = _results(records, "claims-bob")
    assert result.status == "error" and result.error is not None and result.error.type == "InvalidJob", result
    dead = await _read_until(_as(acl_broker, "admin"), f"{PREFIX}.dlq",
                             lambda rs: bool(_dead_letter_type(rs, "claims-bob")))
    assert _dead_letter_type(dead, "claims-bob") == [b"InvalidJob"]
    bobs = await _read_until(_as(acl_broker, "bob"), VISION.tenant_results("bob"), lambda rs: False, timeout=2)
    assert _results(bobs, "claims-bob") == []
    _still_up(service)


async def test_a_reply_to_into_bobs_results_is_refused_and_nothing_reaches_bob(acl_broker, service, digits):
    await _publish_as_alice(acl_broker, Job(job_id="answer-bob", model="vision", inputs={"image": digits[2]},
                                            reply_to=VISION.tenant_results("bob")))
    records = await _read_until(_as(acl_broker, "alice"), VISION.tenant_results("alice"),
                                lambda rs: bool(_results(rs, "answer-bob")))
    (result,) = _results(records, "answer-bob")
    assert result.status == "error" and result.error is not None and result.error.type == "RefusedReplyTo", result
    dead = await _read_until(_as(acl_broker, "admin"), f"{PREFIX}.dlq",
                             lambda rs: bool(_dead_letter_type(rs, "answer-bob")))
    assert _dead_letter_type(dead, "answer-bob") == [b"RefusedReplyTo"]
    bobs = await _read_until(_as(acl_broker, "bob"), VISION.tenant_results("bob"), lambda rs: False, timeout=3)
    assert _results(bobs, "answer-bob") == []
    _still_up(service)


async def test_a_job_id_reused_by_another_tenant_runs_for_that_tenant(acl_broker, service, digits):
    async with AiaasClient(_tenant(acl_broker, "alice")) as alice, AiaasClient(_tenant(acl_broker, "bob")) as bob:
        alices = await (await alice.submit("vision", {"image": digits[0]}, job_id="shared-id")).result(timeout=60)
        bobs = await (await bob.submit("vision", {"image": digits[7]}, job_id="shared-id")).result(timeout=60)
        # The memory is there: alice repeating her id (with another image) gets her first outcome again.
        again = await (await alice.submit("vision", {"image": digits[7]}, job_id="shared-id")).result(timeout=60)
    assert (alices.status, alices.outputs["label"]) == ("ok", 0)
    assert (bobs.status, bobs.outputs["label"]) == ("ok", 7), "bob got alice's outcome for her job id"
    assert again.outputs == alices.outputs and again.completed_at == alices.completed_at
    alice_side = await _read_until(_as(acl_broker, "alice"), VISION.tenant_results("alice"),
                                   lambda rs: len(_results(rs, "shared-id")) >= 2)
    bob_side = await _read_until(_as(acl_broker, "bob"), VISION.tenant_results("bob"),
                                 lambda rs: bool(_results(rs, "shared-id")))
    assert [r.outputs["label"] for r in _results(alice_side, "shared-id")] == [0, 0]
    assert [r.outputs["label"] for r in _results(bob_side, "shared-id")] == [7]
    _still_up(service)


async def test_a_restarted_service_remembers_each_tenants_outcomes_under_its_acls(acl_broker, service, digits):
    """Last: at start the service reads every tenant's results topic back (as `aiaas-vision`), each as its own."""
    async with AiaasClient(_tenant(acl_broker, "alice")) as alice, AiaasClient(_tenant(acl_broker, "bob")) as bob:
        first = await (await alice.submit("vision", {"image": digits[4]}, job_id="before-restart")).result(timeout=60)
        _still_up(service)
        assert service.signal() == 0, service.log_text()[-3000:]  # a clean SIGTERM: drain, commit, leave
        await asyncio.to_thread(service.start)
        ready = service.log_text().rsplit(" ready: ", 1)[1].splitlines()[0]
        assert int(ready.split(" outcomes remembered")[0].rsplit(", ", 1)[1]) >= 1, ready
        again = await (await alice.submit("vision", {"image": digits[5]}, job_id="before-restart")).result(timeout=60)
        bobs = await (await bob.submit("vision", {"image": digits[5]}, job_id="before-restart")).result(timeout=60)
    assert (first.outputs["label"], first.completed_at) == (again.outputs["label"], again.completed_at) == \
        (4, first.completed_at), "alice's repeated job id was run again after the restart"
    assert bobs.outputs["label"] == 5 and bobs.completed_at != first.completed_at
    _still_up(service)
