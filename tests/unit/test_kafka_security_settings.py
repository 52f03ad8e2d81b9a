"""KafkaSettings security: what every aiokafka client gets for SASL/SCRAM and TLS, and what is refused."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from aiaas.errors import BrokerUnavailable, KafkaAuthenticationFailed
from aiaas.kafka.diagnostics import explain_connection_failure
from aiaas.settings import KafkaSettings

SCRAM = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
         "sasl_username": "alice", "sasl_password": "alice-secret"}


@pytest.fixture(autouse=True)
def _no_kafka_environment(monkeypatch):
    """These tests construct settings explicitly; a developer's AIAAS_KAFKA_* must not leak in."""
    import os

    for name in [n for n in os.environ if n.startswith("AIAAS_KAFKA_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA and a client certificate whose key is encrypted with the password `key-pw` (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=client", "-keyout", "plain.key", "-out", "client.csr")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-out", "client.pem")
    run("pkey", "-in", "plain.key", "-aes256", "-passout", "pass:key-pw", "-out", "client.key")
    return d


def test_plaintext_is_the_default_and_carries_no_security_arguments():
    kwargs = KafkaSettings().connection_kwargs()
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert not {"sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_context"} & kwargs.keys()
    assert KafkaSettings().faststream_security() is None


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_over_sasl_plaintext_gives_aiokafka_its_sasl_arguments_and_no_tls(mechanism):
    kwargs = KafkaSettings(**SCRAM | {"sasl_mechanism": mechanism}).connection_kwargs()
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "alice"
    assert kwargs["sasl_plain_password"] == "alice-secret"  # aiokafka wants the plain string
    assert "ssl_context" not in kwargs


def test_the_password_stays_out_of_reprs_and_dumps():
    settings = KafkaSettings(**SCRAM | {"ssl_password": "key-pw"})
    assert "alice-secret" not in repr(settings) and "alice-secret" not in str(settings.model_dump())
    assert "key-pw" not in repr(settings)


def test_scram_settings_come_from_the_environment(monkeypatch):
    for name, value in SCRAM.items():
        monkeypatch.setenv(f"AIAAS_KAFKA_{name.upper()}", value)
    monkeypatch.setenv("AIAAS_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9094,kafka-2:9094")
    kwargs = KafkaSettings().connection_kwargs()
    assert kwargs["bootstrap_servers"] == "kafka-1:9094,kafka-2:9094"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        "SCRAM-SHA-256", "alice", "alice-secret")


def test_sasl_ssl_verifies_the_broker_with_the_configured_ca(pki):
    settings = KafkaSettings(**SCRAM | {"security_protocol": "SASL_SSL", "ssl_cafile": str(pki / "ca.pem")})
    kwargs = settings.connection_kwargs()
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == ["test CA"]
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"


def test_ssl_without_a_cafile_uses_the_system_trust_store():
    context = KafkaSettings(security_protocol="SSL").connection_kwargs()["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


def test_a_client_certificate_is_loaded_with_its_key_password(pki):
    base = {"security_protocol": "SSL", "ssl_cafile": str(pki / "ca.pem"),
            "ssl_certfile": str(pki / "client.pem"), "ssl_keyfile": str(pki / "client.key")}
    assert isinstance(KafkaSettings(**base, ssl_password="key-pw").connection_kwargs()["ssl_context"], ssl.SSLContext)
    with pytest.raises(ssl.SSLError):  # the key really is read, with the password
        KafkaSettings(**base, ssl_password="wrong").connection_kwargs()


@pytest.mark.parametrize(("protocol", "mechanism", "expected", "use_ssl"), [
    ("SASL_PLAINTEXT", "SCRAM-SHA-256", "SASLScram256", False),
    ("SASL_SSL", "SCRAM-SHA-512", "SASLScram512", True),
    ("SASL_SSL", "PLAIN", "SASLPlaintext", True),
])
def test_faststream_gets_the_same_security(protocol, mechanism, expected, use_ssl):
    settings = KafkaSettings(**SCRAM | {"security_protocol": protocol, "sasl_mechanism": mechanism})
    security = settings.faststream_security()
    assert type(security).__name__ == expected
    assert security.use_ssl is use_ssl


@pytest.mark.parametrize(("values", "message"), [
    ({"security_protocol": "SASL_SSL"}, "needs AIAAS_KAFKA_SASL_USERNAME and AIAAS_KAFKA_SASL_PASSWORD"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "alice"}, "needs AIAAS_KAFKA_SASL_USERNAME"),
    ({"sasl_username": "alice", "sasl_password": "x"}, "AIAAS_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"security_protocol": "SSL", "sasl_mechanism": "SCRAM-SHA-256"}, "use SASL_PLAINTEXT or SASL_SSL"),
    ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "needs AIAAS_KAFKA_SSL_CERTFILE"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-1"}, "sasl_mechanism"),
])
def test_half_made_security_settings_are_refused_with_what_is_missing(values, message):
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**values)


def test_every_kafka_setting_is_described():
    assert [name for name, field in KafkaSettings.model_fields.items() if not field.description] == []


async def test_an_unreachable_broker_is_not_mistaken_for_refused_credentials():
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = KafkaSettings(**SCRAM | {"bootstrap_servers": f"127.0.0.1:{port}"})
    error = await explain_connection_failure(settings, ConnectionRefusedError())
    assert isinstance(error, BrokerUnavailable) and not isinstance(error, KafkaAuthenticationFailed)
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in str(error)
