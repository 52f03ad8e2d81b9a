"""The local span store: one file of msgpack records per process, read back by `aiaas trace`.

Used when no OTLP exporter is configured, so a laptop or a test run can follow a job
across the client, the CLI and every service process without a tracing backend.

A service stores two spans per job, thousands a second, in the process that serves the jobs
(bench/hotpath.py). `LocalSpanProcessor` packs each span when it ends, in the thread that
ends it: its fields are still in the CPU's cache then, where the SDK's BatchSpanProcessor
would queue the span and have its export thread read it back cold a few hundred spans later,
which costs more per span in a saturated service (bench/hotpath.py, its tracing export stage),
and the queue then holds bytes instead of span objects that the garbage collector would walk. A
background thread appends the packed spans to the file twice a second; the write itself
releases the GIL. Files written as JSON lines (`*.jsonl`, by earlier versions) are still
read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import TraceFlags

from aiaas.tracing.conventions import JOB_ID
from aiaas.tracing.job_spans import JobSpan

__all__ = ["LocalSpanProcessor", "LocalSpanExporter", "StoredSpan", "load_spans", "job_trace", "render_trace",
           "count_spans", "SUFFIX"]

SUFFIX = ".spans"

log = logging.getLogger("aiaas.span_store")


class LocalSpanExporter(SpanExporter):
    """Appends finished spans to `<dir>/<service>-<pid>.spans`, each a msgpack array of StoredSpan's fields
    (trace, span and parent ids as big-endian bytes: cheaper to make than hex strings)."""

    def __init__(self, directory: Path, service_name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory, self._service_name = directory, service_name
        self.path = directory / f"{service_name}-{os.getpid()}{SUFFIX}"
        # A packer per thread: one packer is not re-entrant while its `default` runs Python code.
        self._packers = threading.local()
        self._resource: Resource | None = None
        self._service = "?"

    def reopen_for_this_process(self) -> None:
        """After a fork: the child writes its own `<service>-<pid>` file."""
        self.path = self._directory / f"{self._service_name}-{os.getpid()}{SUFFIX}"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the batch in one append."""
        self.write(b"".join(map(self.pack, spans)))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing is held open between exports."""

    def pack(self, span: ReadableSpan) -> bytes:
        """One span's record, as the store holds it."""
        try:
            packer = self._packers.packer
        except AttributeError:
            packer = self._packers.packer = msgpack.Packer(default=str)  # what msgpack cannot pack is stored as str
        return packer.pack(self._record(span))

    def write(self, data: bytes) -> None:
        """Append packed records (one write: a reader sees whole records, or a partly written last one it skips)."""
        if data:
            with self.path.open("ab") as out:
                out.write(data)

    def _record(self, span: ReadableSpan) -> list[object]:
        """StoredSpan's fields in order (an array: no key names to write for every span).

        A SpanContext is a tuple (trace_id, span_id, ...) by its declared type: indexing it is cheaper than its
        properties (each a Python call that indexes it), and a service stores thousands of spans a second."""
        resource = span.resource
        if resource is not self._resource:  # one resource per process: look its name up once
            self._resource, self._service = resource, str(resource.attributes.get("service.name", "?"))
        start: int | None
        if type(span) is JobSpan:  # the service's own per-job spans: every field in one call, nothing copied
            ctx, parent, name, kind, start, end, status, attributes, links = span.fields()
        else:
            ctx, parent, name, kind, start, end, status, attributes, links = (
                span.context, span.parent, span.name, span.kind, span.start_time, span.end_time, span.status,
                dict(span.attributes or {}), span.links)
        return [
            ctx[0].to_bytes(16), ctx[1].to_bytes(8), parent[1].to_bytes(8) if parent else None,
            name, kind._name_, self._service, start, end, status.status_code._name_, attributes,
            [[link_ctx[0].to_bytes(16), link_ctx[1].to_bytes(8)] for link_ctx in (link.context for link in links)]
            if links else [],
        ]


class LocalSpanProcessor(SpanProcessor):
    """Packs every sampled span as it ends and appends the packed spans to the store from a background thread
    every `flush_interval_s` (see the module docstring). Holds at most `max_pending` packed spans between two
    appends; beyond that a span is dropped and counted (`dropped`), as the SDK's BatchSpanProcessor drops from
    a full queue. Spans that cannot be packed or written are dropped and counted too, and logged: tracing never
    fails the code that ends a span, nor a shutdown."""

    def __init__(self, exporter: LocalSpanExporter, flush_interval_s: float = 0.5, max_pending: int = 200_000) -> None:
        self.exporter = exporter
        self.dropped = 0
        self._interval, self._max_pending = flush_interval_s, max_pending
        self._pending: deque[bytes] = deque()  # append and popleft are atomic: the ending thread takes no lock
        self._stopped = False
        self._start_flusher()
        if hasattr(os, "register_at_fork"):  # a forked child starts its own thread and file, without our spans
            reference = weakref.ref(self)

            def after_fork_in_child() -> None:
                processor = reference()
                if processor is not None:
                    processor._after_fork()

            os.register_at_fork(after_in_child=after_fork_in_child)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing: a span is stored when it ends."""

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context[3] & TraceFlags.SAMPLED or self._stopped:  # [3]: the SpanContext's trace flags
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        try:
            self._pending.append(self.exporter.pack(span))
        except Exception as exc:  # e.g. a string attribute msgpack cannot encode: lose the span, not the job
            self.dropped += 1
            log.warning("a span could not be stored (%s: %s)", type(exc).__name__, exc)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Append what is pending now, in the calling thread; False if the write failed."""
        return self._flush()

    def shutdown(self) -> None:
        """Stop the flush thread and append what is left."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._flusher.join(timeout=5)
        self._flush()
        if self.dropped:
            log.warning("the local span store %s lost %d spans (dropped beyond %d waiting, or not written)",
                        self.exporter.path, self.dropped, self._max_pending)

    def _start_flusher(self) -> None:
        self._write_lock = threading.Lock()  # the flush thread and force_flush append one after the other
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every_interval, name="aiaas-span-store", daemon=True)
        self._flusher.start()

    def _after_fork(self) -> None:
        self._pending.clear()
        self.exporter.reopen_for_this_process()
        if not self._stopped:
            self._start_flusher()

    def _flush_every_interval(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()

    def _flush(self) -> bool:
        with self._write_lock:
            pop = self._pending.popleft
            batch = [pop() for _ in range(len(self._pending))]
            try:
                self.exporter.write(b"".join(batch))
            except OSError as exc:  # a full or vanished disk: these spans are lost, the next append tries again
                self.dropped += len(batch)
                log.warning("could not write %d spans to %s: %s", len(batch), self.exporter.path, exc)
                return False
        return True


@dataclass
class StoredSpan:
    """A span read back from the store."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, object] = field(default_factory=dict)
    links: list[list[str]] = field(default_factory=list)


def load_spans(directory: Path) -> list[StoredSpan]:
    """Every span in the store (a partly written last record is skipped)."""
    spans = []
    for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.exists() else []:
        with path.open("rb") as stored:
            try:
                for record in msgpack.Unpacker(stored, raw=False):  # stops at a partly written last record
                    spans += _stored(record)
            except (ValueError, msgpack.UnpackException):
                continue  # a damaged file: what was read before the damage is kept
    for path in sorted(directory.glob("*.jsonl")) if directory.exists() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                spans += _stored(json.loads(line))
            except json.JSONDecodeError:
                continue
    return spans


def count_spans(path: Path) -> int:
    """How many spans one store file holds."""
    with path.open("rb") as stored:
        return sum(1 for _ in msgpack.Unpacker(stored, raw=False))


def _stored(record: object) -> list[StoredSpan]:
    try:
        if isinstance(record, list):
            return [StoredSpan(*_hex_ids(record))]
        return [StoredSpan(**record)] if isinstance(record, dict) else []  # a JSON line of the older store
    except (TypeError, ValueError, AttributeError):  # not a span record: skipped, the next one is read
        return []


def _hex_ids(record: list) -> list:
    """A stored array with its ids as hex strings (they are bytes since msgpack records carry them so; the
    stores of earlier versions hold hex strings already)."""
    trace_id, span_id, parent_id, *rest = record
    if isinstance(trace_id, bytes):
        trace_id, span_id = trace_id.hex(), span_id.hex()
        parent_id = parent_id.hex() if isinstance(parent_id, bytes) else parent_id
    if len(rest) >= 8 and isinstance(rest[7], list):
        rest[7] = [[part.hex() if isinstance(part, bytes) else part for part in link] for link in rest[7]]
    return [trace_id, span_id, parent_id, *rest]


def job_trace(spans: list[StoredSpan], job_id: str) -> list[StoredSpan]:
    """The spans of the trace(s) that carry `job_id`, plus the spans linked from them (batch inference)."""
    trace_ids = {s.trace_id for s in spans if s.attributes.get(JOB_ID) == job_id}
    in_trace = [s for s in spans if s.trace_id in trace_ids]
    ids = {s.span_id for s in in_trace}
    linked = [s for s in spans if s.trace_id not in trace_ids and any(span_id in ids for _, span_id in s.links)]
    return in_trace + linked


def render_trace(spans: list[StoredSpan]) -> str:
    """An indented span tree with start offsets and durations; linked spans appear under the span they link."""
    if not spans:
        return ""
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[StoredSpan]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in by_id else None
        if parent is None:
            parent = next((sid for _, sid in span.links if sid in by_id and by_id[sid].trace_id != span.trace_id), None)
        children.setdefault(parent, []).append(span)
    t0 = min(s.start_ns for s in spans)
    lines = [f"trace {spans[0].trace_id}  ({len(spans)} spans)", f"{'start':>9} {'duration':>10}  span"]

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            linked = any(sid == parent for _, sid in span.links) and span.parent_id != parent
            marker = "~> " if linked else ""
            detail = _detail(span)
            lines.append(
                f"{(span.start_ns - t0) / 1e6:8.2f}ms {(span.end_ns - span.start_ns) / 1e6:8.2f}ms  "
                f"{'  ' * depth}{marker}{span.name} [{span.kind.lower()}, {span.service}]{detail}"
            )
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


_SHOWN_ATTRIBUTES = {
    "messaging.destination.partition.id": "partition",
    "messaging.kafka.offset": "offset",
    "messaging.batch.message_count": "batch",
    "aiaas.model.version": "version",
    "aiaas.result.status": "status",
    "aiaas.chunk.seq": "chunk",
    "gen_ai.operation.name": "gen_ai",
    "gen_ai.usage.input_tokens": "tokens_in",
    "gen_ai.usage.output_tokens": "tokens_out",
    "gen_ai.response.finish_reasons": "finish",
}


def _detail(span: StoredSpan) -> str:
    parts = [f"{short}={_shown(span.attributes[key])}" for key, short in _SHOWN_ATTRIBUTES.items()
             if key in span.attributes]
    if span.status == "ERROR":
        parts.append("ERROR")
    return f"  {' '.join(parts)}" if parts else ""


def _shown(value: object) -> str:
    """An attribute's value on one line: a list (a span attribute may be one) as its items joined by commas."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
