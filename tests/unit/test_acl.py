"""The ACL plan (`aiaas.acl`): who gets what, how it is spelled for Kafka's tools, and what is refused.

The integration test (tests/integration/test_tenant_acls.py) shows a broker enforcing these rules; these
check the rules themselves, without one.
"""

from __future__ import annotations

import shlex

import pytest

from aiaas.cli.main import main
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.acl import AclPlan, AclRule, kafka_acls_commands, tenant_group_prefix
from aiaas.settings import KafkaSettings

PLAN = AclPlan("aiaas", ("vision", "text"), ("alice", "bob"))


@pytest.fixture(autouse=True)
def _no_kafka_environment(monkeypatch):
    """These tests construct settings explicitly; a developer's AIAAS_KAFKA_* must not leak in."""
    import os

    for name in [n for n in os.environ if n.startswith("AIAAS_KAFKA_")]:
        monkeypatch.delenv(name)


def _granted(principal: str) -> set[tuple[str, str, str, str]]:
    return {(r.resource, r.name, r.pattern, r.operation) for r in PLAN.rules() if r.principal == principal}


def test_a_tenant_gets_exactly_its_own_topics_and_groups():
    alice = _granted("User:alice")
    expected = {("group", "aiaas.tenant.alice.", "prefixed", "READ")}
    for model in ("vision", "text"):
        t = ModelTopics.of(model, "aiaas")
        infer, train, results = t.tenant_infer("alice"), t.tenant_train("alice"), t.tenant_results("alice")
        urgent = t.tenant_urgent("alice")
        expected |= {("topic", infer, "literal", "WRITE"), ("topic", infer, "literal", "DESCRIBE"),
                     ("topic", urgent, "literal", "WRITE"), ("topic", urgent, "literal", "DESCRIBE"),
                     ("topic", train, "literal", "WRITE"), ("topic", train, "literal", "DESCRIBE"),
                     ("topic", results, "literal", "READ"), ("topic", results, "literal", "DESCRIBE")}
    assert alice == expected
    # Literal, so `alice` reaches nothing of a tenant called `alice2`.
    assert ("topic", "aiaas.vision.infer.alice", "literal", "WRITE") in alice


def test_a_service_writes_only_its_own_models_topics():
    writes = {(name, pattern) for resource, name, pattern, op in _granted("User:aiaas-vision")
              if resource == "topic" and op == "WRITE"}
    assert writes == {("aiaas.vision.results", "prefixed"), ("aiaas.vision.retry", "literal"),
                      ("aiaas.dlq", "literal")}
    assert ("topic", "aiaas.vision.infer", "prefixed", "READ") in _granted("User:aiaas-vision")
    assert ("transactional-id", "aiaas.vision.", "prefixed", "WRITE") in _granted("User:aiaas-vision")
    assert ("cluster", "kafka-cluster", "literal", "IDEMPOTENT_WRITE") in _granted("User:aiaas-vision")


def test_only_trainers_may_announce_models():
    announcers = {r.principal for r in PLAN.rules() if r.name == "aiaas.models" and r.operation == "WRITE"}
    assert announcers == {"User:aiaas-vision-trainer", "User:aiaas-text-trainer"}
    without_trainers = AclPlan("aiaas", ("vision",), ("alice",), trainer_user=None)
    assert not [r for r in without_trainers.rules() if r.name == "aiaas.models" and r.operation == "WRITE"]


def test_tenant_groups_never_reach_a_services_or_trainers_group():
    vision_tenant = AclPlan("aiaas", ("vision",), ("vision",))  # a tenant named like a model
    prefix = tenant_group_prefix("aiaas", "vision")
    for group in ("aiaas.vision", "aiaas.vision.trainer"):
        assert not group.startswith(prefix)
    assert ("group", prefix, "prefixed", "READ") in {
        (r.resource, r.name, r.pattern, r.operation) for r in vision_tenant.rules() if r.principal == "User:vision"}


@pytest.mark.parametrize(("tenants", "models", "message"), [
    (("al.ice",), ("vision",), "'al.ice' is not a tenant name"),
    (("Alice",), ("vision",), "'Alice' is not a tenant name"),
    (("a" * 64,), ("vision",), "is not a tenant name"),
    (("alice",), ("vis.ion",), "model type names must match"),
    (("alice",), (), "name at least one model type"),
    (("aiaas-vision",), ("vision",), "aiaas-vision: a tenant may not share its user with a service or trainer"),
])
def test_names_that_would_break_the_scheme_are_refused(tenants, models, message):
    with pytest.raises(ValueError, match=message):
        AclPlan("aiaas", models, tenants)


def test_every_rule_is_a_confluent_binding():
    from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

    bindings = [rule.binding() for rule in PLAN.rules()]
    assert len(set(bindings)) == len(bindings) == 70
    cluster = AclRule("User:aiaas-vision", "cluster", "kafka-cluster", "literal", "IDEMPOTENT_WRITE").binding()
    assert (cluster.restype, cluster.resource_pattern_type, cluster.operation) == (
        ResourceType.BROKER, ResourcePatternType.LITERAL, AclOperation.IDEMPOTENT_WRITE)


def test_printed_commands_are_kafkas_own_tools():
    settings = KafkaSettings(bootstrap_servers="kafka:9092", partitions=6, replication_factor=3)
    lines = kafka_acls_commands(PLAN, settings, "/etc/kafka/admin.properties")
    topics = [shlex.split(line) for line in lines if line.startswith("kafka-topics.sh")]
    acls = [shlex.split(line) for line in lines if line.startswith("kafka-acls.sh")]
    assert len(topics) == len(PLAN.topics(settings)) == 2 * 5 + 2 + 2 * 2 * 4
    assert topics[0] == ["kafka-topics.sh", "--bootstrap-server", "kafka:9092", "--command-config",
                         "/etc/kafka/admin.properties", "--create", "--if-not-exists", "--topic", "aiaas.vision.infer",
                         "--partitions", "6", "--replication-factor", "3"]
    assert ["kafka-acls.sh", "--bootstrap-server", "kafka:9092", "--command-config", "/etc/kafka/admin.properties",
            "--add", "--allow-principal", "User:alice", "--operation", "Describe", "--operation", "Write",
            "--topic", "aiaas.vision.infer.alice", "--resource-pattern-type", "literal"] in acls
    assert any(args[-2:] == ["IdempotentWrite", "--cluster"] for args in acls)
    assert sum(args.count("--operation") for args in acls) == len(PLAN.rules())


def test_cli_prints_the_commands_and_names_a_bad_tenant(capsys, monkeypatch):
    monkeypatch.setenv("AIAAS_KAFKA_TOPIC_PREFIX", "prod")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert main(["acl", "print", "--tenants", "alice", "--models", "vision", "--no-topics",
                 "--trainer-user", ""]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("kafka-acls.sh ") for line in out)
    assert not any("trainer" in line for line in out)
    assert any("--topic prod.vision.results.alice" in line for line in out)

    assert main(["acl", "print", "--tenants", "alice,bob.x"]) == 2
    assert "aiaas: error: 'bob.x' is not a tenant name" in capsys.readouterr().err


def test_admin_connection_mirrors_the_kafka_settings():
    from aiaas.kafka.acl import (
        _admin_config,  # the mapping to librdkafka's names is the one thing to check here
    )

    settings = KafkaSettings(bootstrap_servers="b:9094", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                             sasl_username="admin", sasl_password="pw", ssl_cafile="/ca.pem",
                             ssl_certfile="/client.pem")
    config = _admin_config(settings)
    assert {k: v for k, v in config.items() if k != "logger"} == {
        "bootstrap.servers": "b:9094", "security.protocol": "sasl_ssl", "client.id": "aiaas-acl",
        "socket.timeout.ms": 30000, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin",
        "sasl.password": "pw", "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/client.pem",
        "ssl.key.location": "/client.pem"}
