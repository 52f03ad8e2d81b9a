"""Session fixtures: the real Jaeger v2 and Prometheus that `infra/observe/observe.sh` fetches and starts, each on
ports of its own (never the defaults, so a person's `make observe` can run beside the suite) and a state dir of its
own, stopped at the end of the run.

The first fetch builds Jaeger from source (minutes): `make test` starts it in the background before lint, and these
fixtures wait for it; the tests that use them run last (`tests/integration/conftest.py` moves them there).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO

__all__ = ["OBSERVE_FIXTURES", "Jaeger", "Prometheus", "observe_jaeger", "observe_prometheus"]

OBSERVE_SH = REPO / "infra" / "observe" / "observe.sh"
OBSERVE_FIXTURES = frozenset({"observe_jaeger", "observe_prometheus"})
"""The fixtures that need the fetched backends: the tests that use any of them run last."""

# Below the kernel's ephemeral range (32768+ on Linux), like the suite's brokers (tests/conftest.py says why), and
# clear of their ports (29092-29097, 29392-29396).
_FIRST_PORT = 29500
_taken: set[int] = set()


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and that this run has not handed out."""
    for port in range(_FIRST_PORT, 32768):
        if port in _taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError(f"no free port in {_FIRST_PORT}-32767")


def _get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


@dataclass
class _Backend:
    """One backend started with `observe.sh start <name>` under `env`; `stop` ends it."""

    name: str
    env: dict[str, str]
    state_dir: Path
    running: bool = field(default=False, init=False)

    def start(self) -> None:
        """Start it and wait until it answers (observe.sh waits); raises with observe.sh's output when it fails."""
        done = subprocess.run([str(OBSERVE_SH), "start", self.name], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"observe.sh start {self.name} failed:\n{(done.stdout + done.stderr)[-5000:]}")
        self.running = True
        atexit.register(self.stop)  # also when the run is interrupted (the backend is in a session of its own)

    def stop(self) -> None:
        """Stop it (idempotent)."""
        if self.running:
            subprocess.run([str(OBSERVE_SH), "stop", self.name], env=self.env, capture_output=True)
            self.running = False

    def log_text(self) -> str:
        """Its log so far."""
        log = self.state_dir / f"{self.name}.log"
        return log.read_text(errors="replace") if log.exists() else ""


@dataclass
class Jaeger(_Backend):
    """A running Jaeger v2: OTLP in at `otlp_endpoint`, the query API (and UI) at `url`."""

    otlp_endpoint: str = ""
    """What `OTEL_EXPORTER_OTLP_ENDPOINT` should say for a process to export its spans here (OTLP over HTTP)."""
    url: str = ""
    """Base URL of the UI and its HTTP query API (`/api/services`, `/api/traces/<trace id>`, ...)."""

    def services(self) -> list[str]:
        """The service names that have sent spans."""
        return list(_get_json(f"{self.url}/api/services")["data"] or [])

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans stored for a trace so far (Jaeger's JSON, each with its `serviceName` added); [] when none."""
        try:
            data = _get_json(f"{self.url}/api/traces/{trace_id}")["data"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return [span for found in data or () for span in _with_service(found)]

    def find_traces(self, service: str, *, operation: str | None = None, tags: dict[str, str] | None = None,
                    limit: int = 20) -> list[list[dict[str, Any]]]:
        """The recent traces (each its spans, as `trace` gives them) with a span of `service` that matches."""
        query = {"service": service, "limit": str(limit), "lookback": "1h"}
        if operation:
            query["operation"] = operation
        if tags:
            query["tags"] = json.dumps(tags)
        data = _get_json(f"{self.url}/api/traces?{urllib.parse.urlencode(query)}")["data"]
        return [_with_service(found) for found in data or ()]


def _with_service(found: dict[str, Any]) -> list[dict[str, Any]]:
    processes = found.get("processes", {})
    return [span | {"serviceName": processes.get(span.get("processID"), {}).get("serviceName")}
            for span in found.get("spans", ())]


@dataclass
class Prometheus(_Backend):
    """A running Prometheus that scrapes every target file in `targets_dir` (file-based service discovery)."""

    url: str = ""
    """Base URL of its UI and HTTP API."""
    home: Path = Path()
    """An AIAAS_HOME for the processes to scrape: each writes its target file into `<home>/metrics/targets`."""

    @property
    def targets_dir(self) -> Path:
        """The folder Prometheus watches (`<home>/metrics/targets`; `*.json` there in file_sd format)."""
        return self.home / "metrics" / "targets"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (`[{"metric": {...}, "value": [time, "value"]}, ...]`)."""
        body = _get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active targets with their labels, health and last error (`/api/v1/targets`)."""
        return list(_get_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"])


def _wait_fetched(name: str) -> None:
    """Wait until `observe.sh fetch` has the backend (starting the fetch when `make test` did not); skip with the
    fetch's log only when it failed (no Go, no apt-get, a failed build)."""
    subprocess.run([str(OBSERVE_SH), "fetch", "--background"], capture_output=True, text=True, check=True)
    timeout = os.environ.get("AIAAS_TEST_OBSERVE_FETCH_TIMEOUT", "1800")
    waited = subprocess.run([str(OBSERVE_SH), "wait-fetched", timeout, name], capture_output=True, text=True)
    if waited.returncode == 0:
        return
    output = (waited.stdout + waited.stderr)[-4000:]
    if waited.returncode == 3:  # still running: a stuck or unusually slow machine, not a missing tool
        pytest.fail(f"{name} was not fetched within {timeout} s (AIAAS_TEST_OBSERVE_FETCH_TIMEOUT):\n{output}")
    print(output)
    pytest.skip(f"fetching {name} failed (infra/observe/observe.sh fetch):\n{output}")


def _start(backend: _Backend, attempts: int = 3) -> None:
    """Start it; a port taken between the probe and the start is given up for new ones."""
    for attempt in range(attempts):
        try:
            backend.start()
            return
        except RuntimeError as exc:
            if "port is in use" not in str(exc) or attempt == attempts - 1:
                pytest.fail(str(exc))
            for setting in [k for k in backend.env if k.endswith("_PORT") and k.startswith("AIAAS_OBSERVE_")]:
                backend.env[setting] = str(_free_port())
            if isinstance(backend, Jaeger):
                backend.otlp_endpoint = f"http://127.0.0.1:{backend.env['AIAAS_OBSERVE_JAEGER_OTLP_PORT']}"
                backend.url = f"http://127.0.0.1:{backend.env['AIAAS_OBSERVE_JAEGER_UI_PORT']}"
            elif isinstance(backend, Prometheus):
                backend.url = f"http://127.0.0.1:{backend.env['AIAAS_OBSERVE_PROMETHEUS_PORT']}"


def _env(state_dir: Path, **settings: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIAAS_OBSERVE_") or k == "AIAAS_OBSERVE_CACHE"} \
        | {"AIAAS_OBSERVE_STATE_DIR": str(state_dir)} | settings


@pytest.fixture(scope="session")
def observe_jaeger(tmp_path_factory: pytest.TempPathFactory):
    """A Jaeger v2 of this run's own (traces in memory), stopped at the end of the run."""
    _wait_fetched("jaeger")
    state = tmp_path_factory.mktemp("jaeger")
    ports = {name: str(_free_port()) for name in ("OTLP", "OTLP_GRPC", "UI", "QUERY_GRPC")}
    jaeger = Jaeger("jaeger", _env(state, **{f"AIAAS_OBSERVE_JAEGER_{k}_PORT": v for k, v in ports.items()}), state,
                    otlp_endpoint=f"http://127.0.0.1:{ports['OTLP']}", url=f"http://127.0.0.1:{ports['UI']}")
    _start(jaeger)
    yield jaeger
    jaeger.stop()


@pytest.fixture(scope="session")
def observe_prometheus(tmp_path_factory: pytest.TempPathFactory):
    """A Prometheus of this run's own, watching `<its home>/metrics/targets`: a test sets `AIAAS_HOME` of the
    processes it starts to `observe_prometheus.home` (or writes target files into `targets_dir` itself)."""
    _wait_fetched("prometheus")
    state, home = tmp_path_factory.mktemp("prometheus"), tmp_path_factory.mktemp("prometheus-home")
    port = str(_free_port())
    prometheus = Prometheus("prometheus", _env(state, AIAAS_OBSERVE_PROMETHEUS_PORT=port,
                                               AIAAS_OBSERVE_TARGETS_DIR=str(home / "metrics" / "targets")), state,
                            url=f"http://127.0.0.1:{port}", home=home)
    _start(prometheus)
    yield prometheus
    prometheus.stop()
