"""The Kafka side of the OpenTelemetry messaging conventions, and aiaas's own span attributes.

Spans follow DESIGN.md: `send <topic>` (PRODUCER) and `process <topic>` (CONSUMER) with
`messaging.*` attributes; W3C trace context travels in Kafka headers. Where spans go is
`setup.py`'s concern.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

__all__ = [
    "inject_headers", "extract_context", "producer_attributes", "consumer_attributes",
    "JOB_ID", "MODEL", "MODEL_VERSION", "STATUS", "ATTEMPT", "REPLAYED", "SUPERSEDED", "TRACER_NAME", "CHUNK_SEQ",
    "GEN_AI_OPERATION", "GEN_AI_REQUEST_MODEL", "GEN_AI_REQUEST_MAX_TOKENS", "GEN_AI_REQUEST_TEMPERATURE",
    "GEN_AI_REQUEST_TOP_P", "GEN_AI_USAGE_INPUT_TOKENS", "GEN_AI_USAGE_OUTPUT_TOKENS", "GEN_AI_FINISH_REASONS",
    "GEN_AI_FIRST_TOKEN_EVENT",
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
CHUNK_SEQ = "aiaas.chunk.seq"
"""On a chunk's `send` span: its place in the job's stream."""

# OpenTelemetry GenAI semantic conventions (gen_ai.*), on a generation job's `process` span.
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_FIRST_TOKEN_EVENT = "gen_ai.first_token"
"""An event on the job's span at the moment its first token was generated."""


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


def producer_attributes(topic: str, *, job_id: str | None = None,
                        partition: int | None = None) -> dict[str, AttributeValue]:
    """Attributes of a `send <topic>` span."""
    attrs: dict[str, AttributeValue] = {
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
) -> dict[str, AttributeValue]:
    """Attributes of a `process <topic>` span."""
    attrs: dict[str, AttributeValue] = {
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
