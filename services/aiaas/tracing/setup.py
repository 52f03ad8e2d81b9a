"""Where a process's spans go: OTLP when the standard `OTEL_*` variables say so, else the local span store that
`aiaas trace` reads, or nowhere (`OTEL_TRACES_EXPORTER=none`)."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from aiaas.settings import HomeSettings, TracingSettings

__all__ = ["setup_tracing"]


def _processor(service_name: str, tracing: TracingSettings, home: HomeSettings) -> SpanProcessor | None:
    if tracing.traces_exporter == "none":
        return None
    if tracing.use_otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        return BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500)  # reads OTEL_EXPORTER_OTLP_* itself
    from aiaas.tracing.span_store import LocalSpanExporter, LocalSpanProcessor

    return LocalSpanProcessor(LocalSpanExporter(home.span_dir, service_name))


def setup_tracing(
    service_name: str,
    *,
    exporter: SpanExporter | None = None,
    tracing: TracingSettings | None = None,
    home: HomeSettings | None = None,
) -> TracerProvider:
    """Install a TracerProvider for this process and return it (call `shutdown()` to flush).

    `exporter` overrides the choice made from the settings (tests pass an in-memory one); it is fed by a
    BatchSpanProcessor, as OTLP is. The local span store has its own processor (`span_store.LocalSpanProcessor`).
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name, "process.pid": os.getpid()}))
    processor: SpanProcessor | None
    if exporter is not None:
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=500)
    else:
        processor = _processor(service_name, tracing or TracingSettings(), home or HomeSettings())
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider
