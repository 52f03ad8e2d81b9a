"""Tenants under Kafka ACLs: `infra/kafka/kafka.sh` with AIAAS_KAFKA_ACLS=1 and `aiaas acl apply`.

One broker of this module's own (ports 29392-29396, as test_security.py's, which runs before or after,
never at the same time) with SCRAM users and the StandardAuthorizer: no ACL, no access. `aiaas acl apply`
(as the super user `admin`) grants tenants `alice` and `bob` and the services `aiaas-vision` and
`aiaas-text` what docs/security.md says, and plain aiokafka clients logging in as each of them check that
Kafka enforces it, error class by error class; a producer quota set by `aiaas acl apply --producer-byte-rate` on
tenant `carol` makes the broker hold her publishing to it. Nothing here needs a running aiaas service.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import RecordMetadata

from aiaas.contract.topics import ModelTopics
from aiaas.kafka.acl import AclPlan, tenant_group_prefix
from aiaas.settings import KafkaSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "infra" / "kafka" / "kafka.sh"
PREFIX = f"acl{uuid.uuid4().hex[:8]}"
PASSWORDS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret",
             "aiaas-vision": "vision-secret", "aiaas-text": "text-secret", "aiaas-llm": "llm-secret"}
VISION, TEXT, LLM = ModelTopics.of("vision", PREFIX), ModelTopics.of("text", PREFIX), ModelTopics.of("llm", PREFIX)


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """The SASL_PLAINTEXT address of a broker that enforces ACLs; `admin` is its super user."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("the ACL tests need Java 17+ and Maven to fetch and run the local Kafka broker")
    port = int(os.environ.get("AIAAS_TEST_SECURE_KAFKA_PORT", "29392"))
    if taken := [p for p in range(port, port + 5) if _port_taken(p)]:
        pytest.skip(f"ports {taken} are in use: set AIAAS_TEST_SECURE_KAFKA_PORT to a free range of 5 ports")
    state = tmp_path_factory.mktemp("kafka-acls")
    env = os.environ | {"AIAAS_KAFKA_PORT": str(port), "AIAAS_KAFKA_STATE_DIR": str(state),
                        "AIAAS_KAFKA_SCRAM_USERS": ",".join(f"{u}:{p}" for u, p in PASSWORDS.items()),
                        "AIAAS_KAFKA_ACLS": "1", "AIAAS_KAFKA_SUPER_USERS": "admin", "AIAAS_KAFKA_TLS": ""}
    started = subprocess.run([KAFKA_SH, "start"], env=env, capture_output=True, text=True, timeout=180)
    failed_before = request.session.testsfailed
    try:
        if started.returncode != 0:
            pytest.fail(f"kafka.sh could not start the broker with ACLs:\n{started.stdout}\n{started.stderr}")
        assert "ACLs enforced (StandardAuthorizer); super users: User:ANONYMOUS User:admin" in started.stdout
        yield f"127.0.0.1:{port + 2}"
    finally:
        subprocess.run([KAFKA_SH, "stop"], env=env, capture_output=True, timeout=60)
        if started.returncode == 0 and request.session.testsfailed > failed_before:
            log = state / "kafka.log"
            print(f"--- ACL broker log ({log}) ---")
            print(log.read_text(errors="replace")[-6000:] if log.exists() else "(no log)")


def _as(broker: str, user: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker, topic_prefix=PREFIX, security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism="SCRAM-SHA-256", sasl_username=user, sasl_password=PASSWORDS[user])


def _acl_cli(broker: str, user: str, *args: str, tenants: str = "alice,bob",
             models: str = "vision,text,llm") -> subprocess.CompletedProcess:
    settings = _as(broker, user)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AIAAS_KAFKA_"))} | {
        "AIAAS_KAFKA_BOOTSTRAP_SERVERS": broker, "AIAAS_KAFKA_TOPIC_PREFIX": PREFIX,
        "AIAAS_KAFKA_SECURITY_PROTOCOL": settings.security_protocol, "AIAAS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "AIAAS_KAFKA_SASL_USERNAME": user, "AIAAS_KAFKA_SASL_PASSWORD": PASSWORDS[user], "OTEL_TRACES_EXPORTER": "none",
    }
    command = [sys.executable, "-c", "import sys; from aiaas.cli.main import main; sys.exit(main())", "acl", "apply",
               "--tenants", tenants, "--models", models, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
async def applied(acl_broker: str) -> subprocess.CompletedProcess:
    """`aiaas acl apply --tenants alice,bob --models vision,text,llm`, run once as the super user.

    The controller has the ACLs when the command returns; the broker's authorizer has them a moment later,
    once it has read them from the metadata log: wait for that, as a client would see it.
    """
    done = await asyncio.to_thread(_acl_cli, acl_broker, "admin")
    assert done.returncode == 0, done.stdout + done.stderr
    await _until_granted(_as(acl_broker, "alice"), VISION.tenant_infer("alice"))
    return done


async def _until_granted(settings: KafkaSettings, topic: str) -> None:
    """Once the broker's authorizer lets `settings`' user publish to `topic` (one record)."""
    async with asyncio.timeout(15):
        while True:
            try:
                await _send(settings, topic)
                return
            except (ClusterAuthorizationFailedError, TopicAuthorizationFailedError):  # not there yet
                await asyncio.sleep(0.2)


async def _send(settings: KafkaSettings, topic: str) -> RecordMetadata:
    """One record, from an idempotent producer as the aiaas client and services use."""
    producer = AIOKafkaProducer(**settings.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        return await asyncio.wait_for(producer.send_and_wait(topic, b"payload", key=b"job-1"), 30)
    finally:
        await producer.stop()


async def _read(settings: KafkaSettings, topic: str, group: str | None = None) -> list[ConsumerRecord]:
    """What `topic` holds, read from the start (as a member of `group` when given, committing what it read)."""
    consumer = AIOKafkaConsumer(topic, **settings.connection_kwargs(), group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(30):
            while not records:
                batches = await consumer.getmany(timeout_ms=500)
                records += [r for batch in batches.values() for r in batch]
        if group is not None:
            await consumer.commit()
        return records
    finally:
        await consumer.stop()


def test_apply_creates_topics_and_acls_once_and_only_for_a_super_user(acl_broker, applied):
    first = applied.stdout
    assert VISION.tenant_infer("alice") + "," in first and f"{PREFIX}.models" in first
    assert "ACLs in place for tenants alice, bob and users aiaas-vision, aiaas-vision-trainer, aiaas-text, " \
           f"aiaas-text-trainer, aiaas-llm, aiaas-llm-trainer (prefix {PREFIX})" in first
    assert LLM.tenant_cancel("alice") in first  # a generative model's cancel topics are created with the others

    again = _acl_cli(acl_broker, "admin")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "topics created: none (all there)" in again.stdout

    refused = _acl_cli(acl_broker, "alice", "--no-topics")
    rules = len(AclPlan(PREFIX, ("vision", "text", "llm"), ("alice", "bob")).rules())
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"aiaas: error: Kafka refused {rules} of {rules} ACLs for user 'alice' at {acl_broker}: "
        "CLUSTER_AUTHORIZATION_FAILED; "
        "run `aiaas acl apply` as a super user"), refused.stderr


async def test_tenant_publishes_to_her_own_topics_and_reads_her_own_results(acl_broker, applied):
    alice, service = _as(acl_broker, "alice"), _as(acl_broker, "aiaas-vision")
    for topic in (VISION.tenant_infer("alice"), VISION.tenant_urgent("alice"), VISION.tenant_train("alice"),
                  TEXT.tenant_infer("alice")):
        assert (await _send(alice, topic)).topic == topic

    await _send(service, VISION.tenant_results("alice"))
    (record,) = await _read(alice, VISION.tenant_results("alice"))
    assert (record.key, record.value) == (b"job-1", b"payload")
    # A group of her own works too (commit included).
    assert await _read(alice, VISION.tenant_results("alice"), group=tenant_group_prefix(PREFIX, "alice") + "billing")


@pytest.mark.parametrize("topic", [
    VISION.tenant_infer("bob"), VISION.tenant_urgent("bob"), VISION.tenant_train("bob"), TEXT.tenant_infer("bob"),
    VISION.urgent,  # another tenant's jobs, and the untenanted urgent lane
    f"{PREFIX}.models",  # model announcements: trainers and super users only
    VISION.tenant_results("alice"), VISION.results,  # no forged results, not even into her own topic
    VISION.retry, f"{PREFIX}.dlq", VISION.infer,  # the services' internal topics
    VISION.tenant_infer("mallory"),  # nor a new topic of a tenant who does not exist
])
async def test_tenant_cannot_publish_anywhere_else(acl_broker, applied, topic):
    with pytest.raises(TopicAuthorizationFailedError) as refused:
        await _send(_as(acl_broker, "alice"), topic)
    assert topic in str(refused.value)


@pytest.mark.parametrize("topic", [VISION.tenant_results("bob"), VISION.results, VISION.tenant_infer("alice")])
async def test_tenant_cannot_read_another_tenants_results_or_any_other_topic(acl_broker, applied, topic):
    await _send(_as(acl_broker, "aiaas-vision" if "results" in topic else "alice"), topic)  # something is there
    with pytest.raises(TopicAuthorizationFailedError) as refused:
        await _read(_as(acl_broker, "alice"), topic)
    assert topic in str(refused.value)


@pytest.mark.parametrize("group", [tenant_group_prefix(PREFIX, "bob") + "billing", f"{PREFIX}.vision",
                                   f"{PREFIX}.vision.trainer"])
async def test_tenant_cannot_join_another_principals_group(acl_broker, applied, group):
    await _send(_as(acl_broker, "aiaas-vision"), VISION.tenant_results("alice"))
    with pytest.raises(GroupAuthorizationFailedError):
        await _read(_as(acl_broker, "alice"), VISION.tenant_results("alice"), group=group)


async def test_service_writes_its_own_topics_and_reads_its_tenants_jobs(acl_broker, applied):
    service = _as(acl_broker, "aiaas-vision")
    for topic in (VISION.tenant_results("alice"), VISION.tenant_results("bob"), VISION.results, VISION.retry,
                  f"{PREFIX}.dlq"):
        assert (await _send(service, topic)).topic == topic
    await _send(_as(acl_broker, "alice"), VISION.tenant_infer("alice"))
    assert await _read(service, VISION.tenant_infer("alice"), group=f"{PREFIX}.vision")


@pytest.mark.parametrize("topic", [
    TEXT.tenant_results("alice"), TEXT.results, TEXT.retry,  # another model's service's topics
    f"{PREFIX}.models",  # only trainers announce
    VISION.tenant_infer("alice"), VISION.infer,  # no jobs in a tenant's name
])
async def test_service_cannot_write_any_other_topic(acl_broker, applied, topic):
    with pytest.raises(TopicAuthorizationFailedError) as refused:
        await _send(_as(acl_broker, "aiaas-vision"), topic)
    assert topic in str(refused.value)


async def test_service_cannot_read_another_models_jobs(acl_broker, applied):
    await _send(_as(acl_broker, "alice"), TEXT.tenant_infer("alice"))
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(_as(acl_broker, "aiaas-vision"), TEXT.tenant_infer("alice"))


@pytest.mark.parametrize(("transactional_id", "allowed"), [(f"{PREFIX}.vision.replica-0", True),
                                                           (f"{PREFIX}.text.replica-0", False)])
async def test_service_transactions_only_under_its_own_ids(acl_broker, applied, transactional_id, allowed):
    """Exactly-once mode: `<group>.<instance>` transactional ids, the group being `<prefix>.<model>`."""
    producer = AIOKafkaProducer(**_as(acl_broker, "aiaas-vision").connection_kwargs(),
                                transactional_id=transactional_id)
    try:
        if allowed:
            await producer.start()
            async with producer.transaction():
                await producer.send_and_wait(VISION.tenant_results("alice"), b"payload", key=b"job-1")
        else:
            with pytest.raises(TransactionalIdAuthorizationFailed):
                await producer.start()
    finally:
        await producer.stop()


async def test_tenant_cancels_her_own_generations_only(acl_broker, applied):
    alice = _as(acl_broker, "alice")
    assert (await _send(alice, LLM.tenant_cancel("alice"))).topic == LLM.tenant_cancel("alice")
    for topic in (LLM.tenant_cancel("bob"), LLM.cancel):  # not bob's jobs, nor anyone's through the shared topic
        with pytest.raises(TopicAuthorizationFailedError) as refused:
            await _send(alice, topic)
        assert topic in str(refused.value)


async def test_only_the_llm_service_reads_cancel_topics_each_replica_in_a_group_of_its_own(acl_broker, applied):
    await _send(_as(acl_broker, "alice"), LLM.tenant_cancel("alice"))
    assert await _read(_as(acl_broker, "aiaas-llm"), LLM.tenant_cancel("alice"), group=f"{PREFIX}.llm.cancel.r1")
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(_as(acl_broker, "aiaas-vision"), LLM.tenant_cancel("alice"))
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(_as(acl_broker, "bob"), LLM.tenant_cancel("alice"))


async def test_a_tenant_quota_makes_the_broker_hold_her_publishing_to_it(acl_broker, applied):
    """`aiaas acl apply --producer-byte-rate`: Kafka throttles that tenant's producers, whatever her client does.

    carol (a tenant of her own, so the quota slows no other test) publishes 96 KiB under a quota of 16 KiB/s: 6 s
    of her quota, to one partition in requests of one 2 KiB batch. The broker (kafka.sh: quota.window.num=2, windows
    of 1 s) lets about one window's worth through at once; past that it answers each request with a throttle time
    and mutes her connection for it (KIP-219), so everything but the last request waits: at least ~4.9 s
    (unthrottled: a fraction of a second). Only a lower bound is asserted, which a busy machine cannot break.
    """
    from aiaas.kafka.quotas import describe_quota, set_quotas

    done = await asyncio.to_thread(_acl_cli, acl_broker, "admin", "--producer-byte-rate", "16384",
                                   tenants="carol", models="vision")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quota on each tenant: producer_byte_rate=16384" in done.stdout
    admin, carol = _as(acl_broker, "admin"), _as(acl_broker, "carol")
    try:
        async with asyncio.timeout(15):
            while await describe_quota(admin, "user", "carol") != {"producer_byte_rate": 16384.0}:
                await asyncio.sleep(0.2)
        assert await describe_quota(admin, "user", "alice") == {}  # only the tenants named
        await _until_granted(carol, VISION.tenant_infer("carol"))

        producer = AIOKafkaProducer(**carol.connection_kwargs(), acks="all", enable_idempotence=True,
                                    max_batch_size=2048)
        await producer.start()
        try:
            started = asyncio.get_running_loop().time()
            sent = [await producer.send(VISION.tenant_infer("carol"), b"x" * 1024, key=b"carol") for _ in range(96)]
            await asyncio.wait_for(asyncio.gather(*sent), 60)
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            await producer.stop()
        assert elapsed >= 3, f"96 KiB at a 16 KiB/s quota went through in {elapsed:.2f} s: not throttled"
    finally:
        await set_quotas(admin, "user", ["carol"], {"producer_byte_rate": None})
    async with asyncio.timeout(15):
        while await describe_quota(admin, "user", "carol"):
            await asyncio.sleep(0.2)
