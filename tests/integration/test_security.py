"""SASL/SCRAM and TLS against a real broker: `infra/kafka/kafka.sh` in its opt-in security mode.

One broker of this module's own (not the session's PLAINTEXT one) with a SCRAM user and a local CA:
SASL_PLAINTEXT on port + 2, mutual-TLS SSL on port + 3, SASL_SSL on port + 4. A real vision service
authenticates with SCRAM; clients and the CLI reach it through each listener, and every wrong
setting fails at once with an error that names what to fix.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiaas.client.client import AiaasClient
from aiaas.contract.envelopes import Tensor
from aiaas.errors import KafkaAuthenticationFailed
from aiaas.settings import KafkaSettings
from aiaas.vision.data import load_split
from tests.integration.conftest import ServiceProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "infra" / "kafka" / "kafka.sh"
USER, PASSWORD = "alice", "alice-secret"
PREFIX = f"sec{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class SecureBroker:
    port: int
    state: Path
    tls: bool

    def address(self, offset: int) -> str:
        return f"127.0.0.1:{self.port + offset}"

    @property
    def tls_dir(self) -> Path:
        return self.state / "tls"

    def settings(self, protocol: str = "SASL_PLAINTEXT", **overrides: object) -> KafkaSettings:
        """Client settings for one listener; SASL ones log in as the SCRAM user unless overridden."""
        offset = {"PLAINTEXT": 0, "SASL_PLAINTEXT": 2, "SSL": 3, "SASL_SSL": 4}[protocol]
        values: dict[str, object] = {"bootstrap_servers": self.address(offset), "topic_prefix": PREFIX,
                                     "security_protocol": protocol}
        if protocol.startswith("SASL"):
            values |= {"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": USER, "sasl_password": PASSWORD}
        if protocol.endswith("SSL"):
            values["ssl_cafile"] = str(self.tls_dir / "ca.pem")
        if protocol == "SSL":
            values |= {"ssl_certfile": str(self.tls_dir / "client.pem"),
                       "ssl_keyfile": str(self.tls_dir / "client.key")}
        return KafkaSettings(**(values | overrides))

    def env(self, settings: KafkaSettings) -> dict[str, str]:
        """The same settings as the AIAAS_KAFKA_* variables a process reads."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AIAAS_KAFKA_"))}
        for name, value in settings.model_dump(exclude_none=True).items():
            value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            env[f"AIAAS_KAFKA_{name.upper()}"] = str(value)
        return env


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> SecureBroker:
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("the security tests need Java 17+ and Maven to fetch and run the local Kafka broker")
    port = int(os.environ.get("AIAAS_TEST_SECURE_KAFKA_PORT", "29392"))
    if taken := [p for p in range(port, port + 5) if _port_taken(p)]:
        pytest.skip(f"ports {taken} are in use: set AIAAS_TEST_SECURE_KAFKA_PORT to a free range of 5 ports")
    state = tmp_path_factory.mktemp("kafka-secure")
    tls = shutil.which("openssl") is not None
    env = os.environ | {"AIAAS_KAFKA_PORT": str(port), "AIAAS_KAFKA_STATE_DIR": str(state),
                        "AIAAS_KAFKA_SCRAM_USERS": f"{USER}:{PASSWORD}", "AIAAS_KAFKA_TLS": "1" if tls else ""}
    started = subprocess.run([KAFKA_SH, "start"], env=env, capture_output=True, text=True, timeout=180)
    failed_before = request.session.testsfailed
    try:
        if started.returncode != 0:
            pytest.fail(f"kafka.sh could not start the SCRAM/TLS broker:\n{started.stdout}\n{started.stderr}")
        yield SecureBroker(port, state, tls)
    finally:
        subprocess.run([KAFKA_SH, "stop"], env=env, capture_output=True, timeout=60)
        if started.returncode == 0 and request.session.testsfailed > failed_before:
            log = state / "kafka.log"
            print(f"--- secure broker log ({log}) ---")
            print(log.read_text(errors="replace")[-6000:] if log.exists() else "(no log)")


@pytest.fixture(scope="module")
def scram_vision_service(secure_broker: SecureBroker, vision_registry, tmp_path_factory, request):
    """`python -m aiaas.vision` logging in with SCRAM-SHA-256 over the SASL_PLAINTEXT listener."""
    env = secure_broker.env(secure_broker.settings("SASL_PLAINTEXT")) | {
        "AIAAS_HOME": str(vision_registry.root.parent), "AIAAS_VISION_MAX_BATCH": "32", "PYTHONUNBUFFERED": "1",
    }
    failed_before = request.session.testsfailed
    service = ServiceProcess(env, tmp_path_factory.mktemp("secure-vision") / "vision.log")
    try:
        yield service.start()
    finally:
        service.stop()
        if request.session.testsfailed > failed_before:
            print(f"--- vision service log ---\n{service.log_text()[-5000:]}")


def _digits(n: int) -> list[tuple[Tensor, int]]:
    split = load_split()
    return [(Tensor.from_numpy(split.test_x[i][0]), int(split.test_y[i])) for i in range(n)]


async def _round_trip(settings: KafkaSettings, n: int = 4) -> None:
    samples = _digits(n)
    async with AiaasClient(settings) as client:
        handles = [await client.submit("vision", {"image": image}) for image, _ in samples]
        results = [await handle.result(timeout=30) for handle in handles]
    assert [r.status for r in results] == ["ok"] * n
    assert sum(r.outputs["label"] == label for r, (_, label) in zip(results, samples, strict=True)) >= n - 1


async def test_service_and_client_authenticate_with_scram(secure_broker, scram_vision_service):
    assert "SASL" in scram_vision_service.env["AIAAS_KAFKA_SECURITY_PROTOCOL"]
    await _round_trip(secure_broker.settings("SASL_PLAINTEXT"))


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL"])
async def test_clients_on_tls_listeners_reach_the_same_service(secure_broker, scram_vision_service, protocol):
    """SASL_SSL: SCRAM-SHA-512 inside TLS; SSL: mutual TLS with the client certificate."""
    if not secure_broker.tls:
        pytest.skip("openssl is not installed: the broker runs without its TLS listeners")
    await _round_trip(secure_broker.settings(protocol, **({"sasl_mechanism": "SCRAM-SHA-512"}
                                                          if protocol == "SASL_SSL" else {})), n=2)


async def test_wrong_password_fails_fast_with_a_clear_error(secure_broker):
    started = time.monotonic()
    with pytest.raises(KafkaAuthenticationFailed) as caught:
        async with AiaasClient(secure_broker.settings("SASL_PLAINTEXT", sasl_password="not-her-password")):
            pass
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"Kafka rejected the SASL credentials for user '{USER}' (SCRAM-SHA-256) at {secure_broker.address(2)}" \
        in message
    assert "AIAAS_KAFKA_SASL_USERNAME / AIAAS_KAFKA_SASL_PASSWORD" in message
    assert "not-her-password" not in message
    assert not caught.value.retriable


@pytest.mark.parametrize(("case", "expected"), [
    ("unknown user", "Kafka rejected the SASL credentials for user 'mallory'"),
    ("mechanism the listener lacks", "does not offer the SASL mechanism PLAIN"),
    ("PLAINTEXT client on the SASL listener", "that listener probably needs SASL or TLS"),
    ("SASL client on the PLAINTEXT listener", "does not speak SASL on that listener"),
    ("CA not configured", "is not trusted"),
    ("no client certificate for mutual TLS", "may require a client certificate"),
])
async def test_each_wrong_setting_names_what_to_fix(secure_broker, case, expected):
    broker = secure_broker
    settings = {
        "unknown user": lambda: broker.settings("SASL_PLAINTEXT", sasl_username="mallory"),
        "mechanism the listener lacks": lambda: broker.settings("SASL_PLAINTEXT", sasl_mechanism="PLAIN"),
        "PLAINTEXT client on the SASL listener": lambda: KafkaSettings(bootstrap_servers=broker.address(2)),
        "SASL client on the PLAINTEXT listener":
            lambda: broker.settings("SASL_PLAINTEXT", bootstrap_servers=broker.address(0)),
        "CA not configured": lambda: broker.settings("SASL_SSL", ssl_cafile=None),
        "no client certificate for mutual TLS": lambda: broker.settings("SSL", ssl_certfile=None, ssl_keyfile=None),
    }[case]
    if "TLS" in case or "CA" in case:
        if not broker.tls:
            pytest.skip("openssl is not installed: the broker runs without its TLS listeners")
    with pytest.raises(KafkaAuthenticationFailed, match=expected):
        async with AiaasClient(settings()):
            pass


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    aiaas = Path(sys.executable).with_name("aiaas")
    command = [str(aiaas)] if aiaas.exists() else [sys.executable, "-c", "import sys; from aiaas.cli.main import main; "
                                                   "sys.exit(main())"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_over_scram_and_with_a_wrong_password(secure_broker, scram_vision_service, tmp_path):
    settings = secure_broker.settings("SASL_PLAINTEXT")
    env = secure_broker.env(settings) | {"AIAAS_HOME": str(tmp_path / "home")}
    ok = _cli(env, "submit", "vision", "--digits-sample", "2", "--wait", "--timeout", "30", "--quiet")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    env["AIAAS_KAFKA_SASL_PASSWORD"] = "not-her-password"
    for args in (("submit", "vision", "--digits-sample", "1"), ("topics",)):
        refused = _cli(env, *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        last_line = refused.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"aiaas: error: Kafka rejected the SASL credentials for user '{USER}' "
                                    f"(SCRAM-SHA-256) at {secure_broker.address(2)}: check "
                                    "AIAAS_KAFKA_SASL_USERNAME / AIAAS_KAFKA_SASL_PASSWORD"), refused.stderr
        assert "Traceback" not in refused.stderr
