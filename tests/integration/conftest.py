"""Integration fixtures: the vision service as a real subprocess against the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiaas.settings import KafkaSettings
from tests.harness import ChildProcess
from tests.harness import service_env as service_env_for
from tests.integration.observe_backends import (  # noqa: F401  (fixtures: Jaeger and Prometheus)
    OBSERVE_FIXTURES,
    observe_jaeger,
    observe_prometheus,
)

pytestmark = pytest.mark.integration


class ServiceProcess(ChildProcess):
    """`python -m aiaas.<model>` (or `module`) with this test's topics, registry and broker; its log is kept."""

    def __init__(self, env: dict[str, str], log_path: Path, model: str = "vision", *args: str,
                 module: str | None = None) -> None:
        super().__init__(["-m", module or f"aiaas.{model}", *args], env, log_path, name=f"{model} service")
        self.model = model

    def start(self, timeout: float = 60) -> ServiceProcess:
        super().start(timeout)
        return self


@pytest.fixture
def kafka_settings(kafka_broker: str, topic_prefix: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_broker, topic_prefix=topic_prefix)


@pytest.fixture
def service_env(kafka_broker: str, topic_prefix: str, session_registry) -> dict[str, str]:
    """Environment of a service process: this test's broker, topics and the session registry."""
    return service_env_for(kafka_broker, topic_prefix, session_registry.root.parent, {"AIAAS_VISION_MAX_BATCH": "32"})


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


def pytest_collection_modifyitems(items):
    """The tests on the observe backends and the Helm chart run last, so the first builds of Jaeger and helm (minutes,
    started in the background by `make test`) overlap the rest of the run."""
    built = OBSERVE_FIXTURES | {"helm"}
    items.sort(key=lambda item: not built.isdisjoint(getattr(item, "fixturenames", ())))
