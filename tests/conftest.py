"""Shared fixtures: in-memory spans for this process, a built vision model, the real broker."""

from __future__ import annotations

import gc
import os
import shutil
import uuid
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiaas.registry.store import Registry
from tests.harness import LocalBroker

ROOT = Path(__file__).resolve().parents[1]
_EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_provider)


@pytest.fixture
def restored_gc():
    """The cyclic collector as pytest's process had it after the test: on, nothing frozen, the same thresholds
    (for tests of code that settles the heap or pauses the collector)."""
    threshold = gc.get_threshold()
    yield
    gc.enable()
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Spans finished by this test process (cleared before each test)."""
    _EXPORTER.clear()
    return _EXPORTER


@pytest.fixture(scope="session")
def session_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """One registry (under one AIAAS_HOME) for the whole run; each model's fixture builds into it."""
    return Registry(tmp_path_factory.mktemp("home") / "registry")


@pytest.fixture(scope="session")
def vision_registry(session_registry: Registry) -> Registry:
    """The session registry with one real vision version (trained once per test run, a few seconds)."""
    from aiaas.vision.trainer import build

    build(session_registry)
    return session_registry


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real single-node Kafka from infra/kafka, on its own port and state dir, for the whole run.

    The suite's brokers listen on 29092-29093 (this one), 29096-29097 (the fault suite's) and 29392-29396
    (the secure one's): all below the kernel's ephemeral range (32768-60999 on Linux, 49152+ elsewhere),
    where any outgoing connection on the machine may take a port as its local one just before the broker
    binds it. CI once failed that way on 39396.
    """
    port = int(os.environ.get("AIAAS_TEST_KAFKA_PORT", "29092"))
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("integration tests need Java 17+ and Maven to fetch and run the local Kafka broker")
    broker = LocalBroker(port, tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except RuntimeError as exc:
        pytest.fail(f"the local Kafka broker did not start:\n{exc}")
    yield broker.bootstrap
    broker.stop()
    log = broker.log_path
    if log.exists() and "ERROR" in log.read_text(errors="replace"):
        print("--- kafka log (errors) ---")
        print("\n".join(line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line)[-4000:])


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of this test's own: its topics (`<prefix>.vision.infer`, ...) are new."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def text_registry(session_registry: Registry) -> Registry:
    """The session registry with one real text version (encoder exported, head trained: ~15 s)."""
    from aiaas.text.trainer import build

    build(session_registry)
    return session_registry


@pytest.fixture
def pre_int8_text_registry(text_registry: Registry, tmp_path: Path) -> Registry:
    """A registry of its own holding the session's text version as built before int8 graphs existed (no int8 file)."""
    version = text_registry.resolve("text", "production")
    folder = text_registry.root / "text" / f"v{version.version}"
    old = Registry(tmp_path / "pre-int8-registry")
    old.register("text", folder / version.artifact, params=version.params,
                 companions=tuple(folder / name for name in version.files if name != "encoder.int8.onnx"))
    return old


@pytest.fixture(scope="session")
def llm_registry(session_registry: Registry) -> Registry:
    """The session registry with the LLM converted from its package once (~30 s on two cores)."""
    pytest.importorskip("gguf", reason="the llm extra is not installed (make install)")
    from aiaas.llm.trainer import build

    build(session_registry)
    return session_registry


@pytest.fixture(scope="session")
def recsys_registry(session_registry: Registry) -> Registry:
    """The session registry with one real recsys version (ratings generated, model trained: a few seconds)."""
    from aiaas.recsys.trainer import build

    build(session_registry)
    return session_registry


@pytest.fixture(scope="session")
def rnn_registry(session_registry: Registry) -> Registry:
    """The session registry with one real rnn version (sessions generated, GRU trained as `build` does: ~20 s)."""
    from aiaas.rnn.trainer import build

    build(session_registry)
    return session_registry


@pytest.fixture(scope="session")
def vae_registry(session_registry: Registry) -> Registry:
    """The session registry with one real vae version (trained on the digits and scored: tens of seconds)."""
    from aiaas.vae.trainer import build

    build(session_registry)
    return session_registry
