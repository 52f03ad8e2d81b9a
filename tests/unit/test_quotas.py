"""Tenant quotas (`aiaas.kafka.quotas`): the values, the request on the wire, refusals and the printed commands.

The integration test (tests/integration/test_tenant_acls.py) shows a broker throttling a tenant under a quota set by
`aiaas acl apply`; these check the parts without one.
"""

from __future__ import annotations

import math
import shlex
import struct
from types import SimpleNamespace

import pytest

from aiaas.cli.main import main
from aiaas.errors import AclRefused
from aiaas.kafka import quotas
from aiaas.kafka.quotas import TenantQuota, kafka_configs_commands, set_quotas
from aiaas.settings import KafkaSettings


@pytest.fixture(autouse=True)
def _no_kafka_environment(monkeypatch):
    """These tests construct settings explicitly; a developer's AIAAS_KAFKA_* must not leak in."""
    import os

    for name in [n for n in os.environ if n.startswith("AIAAS_KAFKA_")]:
        monkeypatch.delenv(name)


def test_a_quota_holds_only_the_keys_given():
    quota = TenantQuota(producer_byte_rate=5 * 2**20, request_percentage=25)
    assert quota.values() == {"producer_byte_rate": 5242880, "request_percentage": 25}
    assert quota and not TenantQuota()


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf])
def test_a_quota_must_be_a_positive_number(value):
    with pytest.raises(ValueError, match="consumer_byte_rate must be a positive number"):
        TenantQuota(consumer_byte_rate=value)


@pytest.mark.parametrize("value", [1.5, 2**63])
def test_a_byte_rate_is_a_whole_number_kafka_can_hold(value):
    """Kafka keeps byte rates as a Java long and refuses a fraction; a share of thread time may have one."""
    with pytest.raises(ValueError, match="producer_byte_rate must be a whole number of bytes per second"):
        TenantQuota(producer_byte_rate=value)
    assert TenantQuota(request_percentage=12.5).config_string() == "request_percentage=12.5"


def _string(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def test_the_request_is_kafkas_alter_client_quotas_version_0():
    """Field by field as Kafka's AlterClientQuotasRequest.json spells version 0: entries [entity [type, name],
    ops [key, value, remove]], validate_only."""
    request = quotas._AlterClientQuotasRequest([([("user", "alice")], [("producer_byte_rate", 1024.0, False),
                                                                      ("request_percentage", 0.0, True)])])
    wire = request.prepare({49: (0, 1)}).encode()
    assert wire == (struct.pack(">i", 1) + struct.pack(">i", 1) + _string("user") + _string("alice")
                    + struct.pack(">i", 2) + _string("producer_byte_rate") + struct.pack(">d", 1024.0) + b"\0"
                    + _string("request_percentage") + struct.pack(">d", 0.0) + b"\1" + b"\0")


def test_the_response_reads_null_messages_and_names():
    """AlterClientQuotasResponse version 0: throttle_time_ms, entries [error_code, error_message, entity [type,
    name]]; Kafka writes a null message (and a default entity's null name) as length -1."""
    wire = (struct.pack(">i", 0) + struct.pack(">i", 1) + struct.pack(">h", 0) + struct.pack(">h", -1)
            + struct.pack(">i", 1) + _string("user") + struct.pack(">h", -1))
    response = quotas._AlterClientQuotasResponse_v0.decode(wire)
    assert response.entries == [(0, None, [("user", None)])]


async def test_a_refused_quota_names_kafkas_error_and_what_to_do(monkeypatch):
    sent = []

    async def refuse(settings, request):
        sent.append(request)
        return SimpleNamespace(entries=[(0, None, [("user", "alice")]), (31, "denied", [("user", "bob")])])

    monkeypatch.setattr(quotas, "_send", refuse)
    with pytest.raises(AclRefused) as refused:
        await set_quotas(KafkaSettings(), "user", ["alice", "bob"], {"producer_byte_rate": 1.0})
    assert str(refused.value) == (
        "Kafka refused 1 of 2 quotas (user 'bob' first) for the PLAINTEXT principal at 127.0.0.1:9092: "
        "CLUSTER_AUTHORIZATION_FAILED (denied); run `aiaas acl apply` as a super user (the broker's super.users; "
        "AIAAS_KAFKA_SUPER_USERS on the local broker)")
    assert sent[0]._entries == [([("user", "alice")], [("producer_byte_rate", 1.0, False)]),
                                ([("user", "bob")], [("producer_byte_rate", 1.0, False)])]


async def test_none_removes_a_key(monkeypatch):
    sent = []

    async def accept(settings, request):
        sent.append(request)
        return SimpleNamespace(entries=[(0, None, [("client-id", "x")])])

    monkeypatch.setattr(quotas, "_send", accept)
    await set_quotas(KafkaSettings(), "client-id", ["x"], {"producer_byte_rate": None})
    assert sent[0]._entries == [([("client-id", "x")], [("producer_byte_rate", 0.0, True)])]


def test_printed_quotas_are_kafka_configs_commands():
    settings = KafkaSettings(bootstrap_servers="kafka:9092")
    lines = kafka_configs_commands(settings, "user", ["alice", "bob"], TenantQuota(5242880, request_percentage=50),
                                   "/etc/kafka/admin.properties")
    assert [shlex.split(line) for line in lines] == [
        ["kafka-configs.sh", "--bootstrap-server", "kafka:9092", "--command-config", "/etc/kafka/admin.properties",
         "--alter", "--add-config", "producer_byte_rate=5242880,request_percentage=50", "--entity-type", "users",
         "--entity-name", name] for name in ("alice", "bob")]


def test_cli_prints_the_quotas_after_the_acls_and_refuses_a_bad_one(capsys, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert main(["acl", "print", "--tenants", "alice", "--models", "vision", "--no-topics",
                 "--producer-byte-rate", "1048576"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("kafka-configs.sh ") and "--add-config producer_byte_rate=1048576" in out[-1]
    assert all(line.startswith("kafka-acls.sh ") for line in out[:-1])

    assert main(["acl", "print", "--tenants", "alice", "--request-percentage", "-5"]) == 2
    assert "aiaas: error: request_percentage must be a positive number, not -5.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a byte rate is a whole number
        main(["acl", "print", "--tenants", "alice", "--producer-byte-rate", "1.5"])
    assert "invalid int value: '1.5'" in capsys.readouterr().err
