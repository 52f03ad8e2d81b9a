"""Integration fixtures: the vision service as a real subprocess against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiaas.settings import KafkaSettings

pytestmark = pytest.mark.integration


class ServiceProcess:
    """`python -m aiaas.<model>` with this test's topics, registry and broker; its log is kept."""

    def __init__(self, env: dict[str, str], log_path: Path, model: str = "vision", *args: str,
                 module: str | None = None) -> None:
        self.env, self.log_path, self.model, self.args = env, log_path, model, args
        self.module = module or f"aiaas.{model}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ServiceProcess:
        marker = self.log_text().count(" ready: ")  # "<model> service ready: …" / "<model> trainer ready: …"
        log = self.log_path.open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while self.log_text().count(" ready: ") == marker:
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"{self.model} service did not become ready:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def signal(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)


@pytest.fixture
def kafka_settings(kafka_broker: str, topic_prefix: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_broker, topic_prefix=topic_prefix)


@pytest.fixture
def service_env(kafka_broker: str, topic_prefix: str, session_registry) -> dict[str, str]:
    """Environment of a service process: this test's broker, topics and the session registry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return env | {
        "AIAAS_KAFKA_BOOTSTRAP_SERVERS": kafka_broker,
        "AIAAS_KAFKA_TOPIC_PREFIX": topic_prefix,
        "AIAAS_HOME": str(session_registry.root.parent),
        "AIAAS_VISION_MAX_BATCH": "32",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def vision_service(service_env, vision_registry, tmp_path, request):
    service = ServiceProcess(service_env, tmp_path / "vision.log")
    yield service
    service.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(service.log_text()[-5000:])


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
