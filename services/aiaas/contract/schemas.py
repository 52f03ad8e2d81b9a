"""Generate the contract documents in `schemas/` from the pydantic models (the source of truth)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiaas.contract.envelopes import Job, Result

__all__ = ["render_schemas", "write_schemas", "check_schemas"]


def _asyncapi(job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    channel: Callable[[str, str, str], dict[str, Any]] = lambda address, msg, desc: {  # noqa: E731
        "address": address, "description": desc, "messages": {msg: {"$ref": f"#/components/messages/{msg}"}}}
    headers = {
        "type": "object",
        "properties": {"traceparent": {"type": "string", "description": "W3C trace context"},
                       "tracestate": {"type": "string"}},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "aiaas", "version": "1",
                 "description": "AI models served over Kafka. msgpack-encoded envelopes; keys are job ids."},
        "defaultContentType": "application/msgpack",
        "channels": {
            "infer": channel("{prefix}.{model}.infer", "Job", "Inference jobs for one model type."),
            "results": channel("{prefix}.{model}.results", "Result", "One result per job, keyed by job_id."),
            "dlq": channel("{prefix}.dlq", "DeadLetter",
                           "Original bytes of a failed job plus aiaas.origin.* and aiaas.error.* headers."),
        },
        "operations": {
            "publishJob": {"action": "send", "channel": {"$ref": "#/channels/infer"}},
            "receiveResult": {"action": "receive", "channel": {"$ref": "#/channels/results"}},
            "receiveDeadLetter": {"action": "receive", "channel": {"$ref": "#/channels/dlq"}},
        },
        "components": {
            "messages": {
                "Job": {"payload": {"$ref": "#/components/schemas/Job"}, "headers": headers},
                "Result": {"payload": {"$ref": "#/components/schemas/Result"}, "headers": headers},
                "DeadLetter": {"payload": {"type": "string", "format": "binary"}},
            },
            # pydantic nests shared definitions under $defs; AsyncAPI wants them side by side.
            "schemas": {**job.pop("$defs", {}), **result.pop("$defs", {}), "Job": job, "Result": result},
        },
    }


def render_schemas() -> dict[str, str]:
    """File name → content of every generated document."""
    job = Job.model_json_schema(ref_template="#/components/schemas/{model}")
    result = Result.model_json_schema(ref_template="#/components/schemas/{model}")
    dump: Callable[[dict[str, Any]], str] = lambda doc: json.dumps(doc, indent=2, sort_keys=True) + "\n"  # noqa: E731
    return {
        "job.schema.json": dump(Job.model_json_schema()),
        "result.schema.json": dump(Result.model_json_schema()),
        "asyncapi.json": dump(_asyncapi(job, result)),
    }


def write_schemas(directory: Path) -> list[Path]:
    """Write every document; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(directory / name)
    return written


def check_schemas(directory: Path) -> list[Path]:
    """Documents whose checked-in content differs from what the code generates."""
    return [directory / name for name, text in render_schemas().items()
            if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text]
