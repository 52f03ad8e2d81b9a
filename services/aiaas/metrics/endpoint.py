"""The HTTP endpoint of an aiaas process: `/metrics` (Prometheus text, or OpenMetrics when the scraper asks),
`/healthz` (liveness) and `/readyz` (readiness).

It runs on a thread of its own, so a scrape or a probe is answered while the event loop is busy with a batch; what
the probes report is computed by the process (`Probe`), from state its event loop keeps current.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from aiaas.errors import ServiceMisconfigured
from aiaas.metrics.probes import Health
from aiaas.metrics.targets import TargetFile
from aiaas.settings import MetricsEndpointSettings

__all__ = ["Probe", "MetricsEndpoint", "open_endpoint", "close_endpoint"]

log = logging.getLogger("aiaas.metrics")

Probe = Callable[[], str | None]
"""A health check: None when healthy, else why not (the body of the 503 answer)."""


class MetricsEndpoint:
    """Serves a registry and two probes on `host:port` (port 0: a free one; `port` says which once started)."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int, alive: Probe, ready: Probe) -> None:
        self.registry = registry
        self._server = ThreadingHTTPServer((host, port), _handler(registry, alive, ready))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="aiaas-metrics", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start answering (on its own thread)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def open_endpoint(registry: CollectorRegistry, health: Health, settings: MetricsEndpointSettings, *, home: Path,
                  role: str, model: str, instance: str) -> tuple[MetricsEndpoint, TargetFile] | None:
    """Start a process's endpoint as its settings say, and write the target file that announces it; None when
    `metrics_port` is -1. Close both with `close_endpoint`."""
    if settings.metrics_port < 0:
        return None
    try:
        endpoint = MetricsEndpoint(registry, host=settings.metrics_host, port=settings.metrics_port,
                                   alive=health.alive, ready=health.ready)
    except OSError as exc:  # the port is taken, or the address is not this host's
        raise ServiceMisconfigured(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} ({exc.strerror or exc}): set "
            "another METRICS_PORT (0: a free one) or METRICS_HOST, or -1 for no endpoint") from exc
    endpoint.start()
    target = TargetFile(home, role=role, model=model, instance=instance, host=settings.metrics_host,
                        port=endpoint.port)
    try:
        target.write()
    except OSError as exc:  # the endpoint still answers; only discovery by target file is lost
        log.warning("cannot write the target file %s (%s): Prometheus and aiaas top will not find this process by "
                    "it", target.path, exc)
    log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", settings.metrics_host, endpoint.port)
    return endpoint, target


def close_endpoint(opened: tuple[MetricsEndpoint, TargetFile] | None) -> None:
    """Remove the target file and stop the endpoint `open_endpoint` started."""
    if opened is not None:
        opened[1].remove()
        opened[0].stop()


def _handler(registry: CollectorRegistry, alive: Probe, ready: Probe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encode, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._answer(200, encode(registry), content_type)
            elif path in ("/healthz", "/readyz"):
                try:
                    problem = (alive if path == "/healthz" else ready)()
                except Exception as exc:  # a probe that fails says so; it never kills the endpoint
                    problem = f"the check failed: {type(exc).__name__}: {exc}"
                body = ("ok" if problem is None else problem).encode() + b"\n"
                self._answer(200 if problem is None else 503, body, "text/plain; charset=utf-8")
            else:
                self._answer(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            log.debug("metrics endpoint: " + format, *args)

    return Handler
