"""OpenTelemetry set-up and the Kafka side of the messaging conventions.

Spans follow DESIGN.md: `send <topic>` (PRODUCER) and `process <topic>` (CONSUMER) with
`messaging.*` attributes; W3C trace context travels in Kafka headers. With the standard
`OTEL_*` variables set, spans are exported with OTLP; otherwise they go to the local span
store that `aiaas trace` reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from .settings import HomeSettings, TracingSettings

__all__ = [
    "setup_tracing",
    "inject_headers",
    "extract_context",
    "producer_attributes",
    "consumer_attributes",
    "JOB_ID",
    "MODEL",
    "MODEL_VERSION",
    "STATUS",
]

JOB_ID = "aiaas.job.id"
MODEL = "aiaas.model"
MODEL_VERSION = "aiaas.model.version"
STATUS = "aiaas.result.status"
ATTEMPT = "aiaas.job.attempt"
REPLAYED = "aiaas.job.replayed"
SUPERSEDED = "aiaas.job.superseded"
"""A retry record delivered again after its job was answered, or beside a later attempt of it: nothing is sent."""
TRACER_NAME = "aiaas"


def _processor(service_name: str, tracing: TracingSettings, home: HomeSettings) -> SpanProcessor | None:
    if tracing.traces_exporter == "none":
        return None
    if tracing.use_otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500)  # reads OTEL_EXPORTER_OTLP_* itself
    from .span_store import LocalSpanExporter, LocalSpanProcessor

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
    if exporter is not None:
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=500)
    else:
        processor = _processor(service_name, tracing or TracingSettings(), home or HomeSettings())
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def inject_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """W3C trace-context headers for a Kafka record, from `context` (default: the current one)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key, value.encode()) for key, value in carrier.items()]


def extract_context(headers: Iterable[tuple[str, bytes | str]] | Mapping[str, bytes | str] | None) -> Context:
    """The trace context a Kafka record carries (an empty context when it carries none)."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    carrier = {k: (v.decode(errors="replace") if isinstance(v, bytes) else v) for k, v in pairs}
    return propagate.extract(carrier)


def producer_attributes(topic: str, *, job_id: str | None = None, partition: int | None = None) -> dict[str, object]:
    """Attributes of a `send <topic>` span."""
    attrs: dict[str, object] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
    }
    if partition is not None:
        attrs["messaging.destination.partition.id"] = str(partition)
    if job_id is not None:
        attrs["messaging.kafka.message.key"] = job_id
        attrs[JOB_ID] = job_id
    return attrs


def consumer_attributes(
    topic: str, partition: int, offset: int, *, group: str | None = None, job_id: str | None = None
) -> dict[str, object]:
    """Attributes of a `process <topic>` span."""
    attrs: dict[str, object] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
    }
    if group is not None:
        attrs["messaging.consumer.group.name"] = group
    if job_id is not None:
        attrs["messaging.kafka.message.key"] = job_id
        attrs[JOB_ID] = job_id
    return attrs
