"""Cheap per-job spans, exported through the SDK's own processors.

A worker opens two spans for every job — `process <topic>` and `send <topic>` — thousands of
times a second in one Python process, and one `infer <model>` span per batch with a link per job.
The SDK's general-purpose span is costly (a lock, attribute cleaning against limits, a context
attach per `with`, the sampler reached through three layers): in the service's profile it cost
more than everything else the worker does for a job (bench/hotpath.py). A `JobSpan`
records the same things — a `SpanContext`, its parent, kind, attributes, status, events, start
and end times — and on `end()` hands itself (a `ReadableSpan`, as the SDK's spans are) to the
tracer's span processor. Exporters, the local span store and OTLP therefore receive what the SDK
would have produced, and a sampler that is not the default one is still asked.

W3C trace context is parsed and written here directly when the process uses the default
propagators (tracecontext and baggage) and a record carries just a canonical `traceparent`;
anything else — `tracestate`, `baggage`, other propagators — goes through `opentelemetry.propagate`.

When the installed tracer is not the OpenTelemetry SDK's (no provider set up, a vendor SDK),
`JobSpans` falls back to `tracer.start_span` and `propagate`: same API, ordinary cost.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from aiaas import tracing

__all__ = ["JobSpans", "JobSpan"]

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_W3C_FIELDS = ({"traceparent", "tracestate", "baggage"}, {"traceparent", "tracestate"})
_DEFAULT_SAMPLER = ParentBased(ALWAYS_ON).get_description()
_UNSET = Status(StatusCode.UNSET)


class JobSpan(trace.Span, ReadableSpan):
    """A recording span for one job's hop: the OpenTelemetry Span API on the writing side, a ReadableSpan
    for processors and exporters. Used from one thread (the service's event loop), so it takes no lock.

    Attribute values must be valid OpenTelemetry attribute types (str, bool, int, float or sequences of
    one of them); aiaas only sets those, and they are not re-checked here.
    """

    # ReadableSpan's fields as this class holds them (narrower than ReadableSpan declares them).
    _context: SpanContext
    _start_time: int
    _attributes: dict[str, Any]
    _events: list[Event]

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind,
                 attributes: dict[str, Any], owner: JobSpans, start_ns: int,
                 carried: Context | None = None, links: Sequence[trace.Link] = ()) -> None:
        # ReadableSpan's fields, set directly: its __init__ would also build a default Resource.
        self._name, self._context, self._parent, self._kind = name, context, parent, kind
        self._attributes, self._events, self._links = attributes, [], links
        self._resource, self._instrumentation_scope = owner.resource, owner.scope
        self._instrumentation_info = owner.instrumentation_info
        self._status, self._start_time, self._end_time = _UNSET, start_ns, None
        self._owner = owner
        self.carried = carried  # the extracted context (baggage), when the record carried more than a traceparent

    # -- for exporters that read every field (the local span store) ---------------------------

    def fields(self) -> tuple[SpanContext, SpanContext | None, str, SpanKind, int, int | None, Status,
                              dict[str, Any], Sequence[trace.Link]]:
        """(context, parent, name, kind, start_time, end_time, status, attributes, links) in one call, where the
        ReadableSpan properties cost a call each and copy the attributes and links. Read-only use: the attributes
        and links are the span's own."""
        return (self._context, self._parent, self._name, self._kind, self._start_time, self._end_time, self._status,
                self._attributes, self._links)

    # -- the Span API ----------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(Event(name, dict(attributes or {}), timestamp or time.time_ns()))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        status = status if isinstance(status, Status) else Status(status, description)
        if self._end_time is not None or self._status.status_code is StatusCode.OK \
                or status.status_code is StatusCode.UNSET:
            return  # as the SDK: OK is final, UNSET changes nothing
        self._status = status

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """The SDK's exception event (type with its module, message, stack trace, escaped)."""
        module, name = type(exception).__module__, type(exception).__qualname__
        self.add_event("exception", {
            "exception.type": f"{module}.{name}" if module and module != "builtins" else name,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
            **(attributes or {}),
        }, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        self._owner.processor.on_end(self)


class JobSpans:
    """Starts the per-job spans of one service process (see the module docstring)."""

    def __init__(self, tracer_name: str = tracing.TRACER_NAME,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(tracer_name, tracer_provider=tracer_provider)
        sdk = isinstance(self.tracer, SdkTracer)
        # A tracer disabled by the provider's configurator records nothing: leave that to the SDK.
        self.fast = sdk and getattr(self.tracer, "_is_enabled", lambda: True)()
        if isinstance(self.tracer, SdkTracer):
            self.processor = self.tracer.span_processor
            self.resource = self.tracer.resource
            self.instrumentation_info = self.tracer.instrumentation_info
            # The tracer's own scope (name, version, schema URL), as its spans carry.
            self.scope = getattr(self.tracer, "_instrumentation_scope", None) or InstrumentationScope(tracer_name)
            self._sampler = self.tracer.sampler
            self._default_sampler = self._sampler.get_description() == _DEFAULT_SAMPLER
            self._ids = self.tracer.id_generator
            self._random_ids = self._ids.is_trace_id_random()
        self.w3c = propagate.get_global_textmap().fields in _W3C_FIELDS

    # -- starting spans --------------------------------------------------------------------

    def start_consumer(self, name: str, headers: Iterable[tuple[str, bytes | str]], attributes: dict[str, Any],
                       start_ns: int | None = None) -> trace.Span:
        """A CONSUMER span continuing the trace a consumed record's headers carry; it starts at `start_ns` (when
        the record was taken from the broker) or now."""
        parent = self._remote_parent(headers) if self.w3c else None
        if parent is None:
            context = tracing.extract_context(headers)
            return self._start(name, SpanKind.CONSUMER, trace.get_current_span(context).get_span_context(),
                               attributes, context, start_ns=start_ns)
        return self._start(name, SpanKind.CONSUMER, parent, attributes, None, start_ns=start_ns)

    def start_child(self, name: str, kind: SpanKind, parent: trace.Span, attributes: dict[str, Any]) -> trace.Span:
        """A span under `parent` (e.g. the PRODUCER span of a job's result under its CONSUMER span)."""
        carried = parent.carried if isinstance(parent, JobSpan) else None
        if not self.fast:
            return self.tracer.start_span(name, context=trace.set_span_in_context(parent, carried), kind=kind,
                                          attributes=attributes)
        return self._start(name, kind, parent.get_span_context(), attributes, carried)

    def start_linked(self, name: str, linked: Sequence[trace.Span], attributes: dict[str, Any]) -> trace.Span:
        """A span that starts a trace of its own, linked from `linked` (the batch inference span: one model call
        serves the jobs of many traces, so it is a child of none of them)."""
        links = [trace.Link(span.get_span_context()) for span in linked]
        if not self.fast:
            return self.tracer.start_span(name, context=Context(), links=links, attributes=attributes)
        return self._start(name, SpanKind.INTERNAL, None, attributes, None, links)

    def headers(self, span: trace.Span) -> list[tuple[str, bytes]]:
        """The trace-context headers that make a record's consumer continue from `span`."""
        carried = span.carried if isinstance(span, JobSpan) else None
        if self.w3c and carried is None:
            ctx = span.get_span_context()
            if ctx.is_valid:
                headers = [("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}".encode())]
                if ctx.trace_state:
                    headers.append(("tracestate", ctx.trace_state.to_header().encode()))
                return headers
        return tracing.inject_headers(trace.set_span_in_context(span, carried))

    def _start(self, name: str, kind: SpanKind, parent: SpanContext | None, attributes: dict[str, Any],
               carried: Context | None, links: Sequence[trace.Link] = (), start_ns: int | None = None) -> trace.Span:
        if not self.fast:
            context = trace.set_span_in_context(NonRecordingSpan(parent), carried) if parent else carried
            return self.tracer.start_span(name, context=context or Context(), kind=kind, attributes=attributes,
                                          start_time=start_ns)
        if parent is None or not parent.is_valid:
            parent, trace_id, random_id = None, self._ids.generate_trace_id(), self._random_ids
        else:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
        trace_state = parent.trace_state if parent is not None else None
        if self._default_sampler:
            sampled = parent is None or parent.trace_flags.sampled
        else:
            # No parent: an empty context, not the current one (a batch span is the root of its own trace).
            context = trace.set_span_in_context(NonRecordingSpan(parent), carried) if parent else carried or Context()
            decision = self._sampler.should_sample(context, trace_id, name, kind, attributes, links)
            sampled, trace_state = decision.decision.is_sampled(), decision.trace_state
            if decision.attributes:
                attributes = {**attributes, **decision.attributes}
            if not decision.decision.is_recording():
                return NonRecordingSpan(self._context(trace_id, False, random_id, trace_state))
        span_context = self._context(trace_id, sampled, random_id, trace_state)
        if not sampled:
            return NonRecordingSpan(span_context)
        span = JobSpan(name, span_context, parent, kind, attributes, self, start_ns or time.time_ns(), carried, links)
        # Processors are annotated for the SDK's own Span; they read it as the ReadableSpan a JobSpan is.
        self.processor.on_start(span, parent_context=carried)  # type: ignore[arg-type]
        return span

    def _context(self, trace_id: int, sampled: bool, random_id: bool, trace_state: TraceState | None) -> SpanContext:
        flags = (TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
        return SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False, trace_flags=TraceFlags(flags),
                           trace_state=trace_state)

    @staticmethod
    def _remote_parent(headers: Iterable[tuple[str, bytes | str]]) -> SpanContext | None:
        """The parent from a lone canonical version-00 `traceparent`; None when the record needs the full
        propagator (no traceparent, another version, tracestate, baggage, anything unusual)."""
        parent = None
        for key, value in headers:
            if key == "traceparent" and parent is None:
                match = _TRACEPARENT.fullmatch(value.decode("ascii", "replace") if isinstance(value, bytes) else value)
                if match is None:
                    return None
                trace_id, span_id = int(match[1], 16), int(match[2], 16)
                if not trace_id or not span_id:
                    return None
                parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))
            elif key in ("traceparent", "tracestate", "baggage"):
                return None
        return parent
