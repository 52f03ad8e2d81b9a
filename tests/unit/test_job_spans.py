"""JobSpans: the worker's cheap per-job spans must be what the SDK itself would have exported."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased
from opentelemetry.trace import NoOpTracerProvider, SpanKind, Status, StatusCode

from aiaas import tracing
from aiaas.tracing.job_spans import JobSpan, JobSpans

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SAMPLED = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())]


def _provider(**kwargs) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _hop(spans: JobSpans) -> list[tuple[str, bytes]]:
    """What the worker does for one job: a CONSUMER span from the record's headers, a PRODUCER span under it."""
    process = spans.start_consumer("process t.infer", SAMPLED, tracing.consumer_attributes("t.infer", 2, 41, group="g"))
    process.set_attribute(tracing.JOB_ID, "job-1")
    send = spans.start_child("send t.results", SpanKind.PRODUCER, process,
                             tracing.producer_attributes("t.results", job_id="job-1"))
    headers = spans.headers(send)
    send.end()
    process.set_status(Status(StatusCode.ERROR, "boom"))
    process.end()
    return headers


def _sdk_hop(tracer: trace.Tracer) -> None:
    """The same hop through the SDK's own spans."""
    parent = tracing.extract_context(SAMPLED)
    with tracer.start_as_current_span("process t.infer", context=parent, kind=SpanKind.CONSUMER,
                                      attributes=tracing.consumer_attributes("t.infer", 2, 41, group="g")) as process:
        process.set_attribute(tracing.JOB_ID, "job-1")
        with tracer.start_as_current_span("send t.results", kind=SpanKind.PRODUCER,
                                          attributes=tracing.producer_attributes("t.results", job_id="job-1")):
            pass
        process.set_status(Status(StatusCode.ERROR, "boom"))


def _shape(span) -> dict:
    return {"name": span.name, "kind": span.kind, "trace_id": span.context.trace_id,
            "sampled": span.context.trace_flags.sampled, "parent_is_remote": span.parent.is_remote,
            "attributes": dict(span.attributes), "status": (span.status.status_code, span.status.description),
            "resource": span.resource, "scope": span.instrumentation_scope.name, "events": list(span.events),
            "links": list(span.links)}


def test_job_spans_export_what_the_sdk_exports_for_the_same_hop():
    provider, exported = _provider()
    spans = JobSpans(tracer_provider=provider)
    assert spans.fast, "the SDK tracer is installed: the fast path must be taken"
    headers = _hop(spans)
    fast = exported.get_finished_spans()
    exported.clear()
    _sdk_hop(provider.get_tracer(tracing.TRACER_NAME))
    sdk = exported.get_finished_spans()

    assert [_shape(s) for s in fast] == [_shape(s) for s in sdk]
    assert all(isinstance(s, JobSpan) for s in fast)
    send, process = fast
    assert format(process.parent.span_id, "016x") == PARENT_ID
    assert send.parent.span_id == process.context.span_id and not send.parent.is_remote
    assert process.start_time <= send.start_time <= send.end_time <= process.end_time
    # The result record continues from the PRODUCER span, exactly as the SDK's propagator writes it.
    assert headers == tracing.inject_headers(trace.set_span_in_context(send))
    assert headers == [("traceparent", f"00-{TRACE_ID}-{send.context.span_id:016x}-01".encode())]


def test_an_unsampled_parent_is_honoured_and_still_propagated():
    provider, exported = _provider()
    spans = JobSpans(tracer_provider=provider)
    process = spans.start_consumer("process t.infer", [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00".encode())], {})
    send = spans.start_child("send t.results", SpanKind.PRODUCER, process, {})
    headers = dict(spans.headers(send))
    send.end(), process.end()
    assert exported.get_finished_spans() == ()
    assert not process.is_recording() and not send.is_recording()
    assert headers["traceparent"].decode().startswith(f"00-{TRACE_ID}-") and headers["traceparent"].endswith(b"-00")


def test_a_configured_sampler_is_asked():
    provider, exported = _provider(sampler=ALWAYS_OFF)
    _hop(JobSpans(tracer_provider=provider))
    assert exported.get_finished_spans() == ()
    provider, exported = _provider(sampler=TraceIdRatioBased(1.0))  # ignores the parent: asked, says yes
    _hop(JobSpans(tracer_provider=provider))
    assert [s.name for s in exported.get_finished_spans()] == ["send t.results", "process t.infer"]


@pytest.mark.parametrize("headers", [
    [("traceparent", b"garbage")],
    [("traceparent", f"00-{'0' * 32}-{PARENT_ID}-01".encode())],
    [("traceparent", f"01-{TRACE_ID}-{PARENT_ID}-01-extra".encode())],
    [],
])
def test_records_without_a_usable_parent_get_what_the_propagator_makes_of_them(headers):
    provider, exported = _provider()
    span = JobSpans(tracer_provider=provider).start_consumer("process t.infer", headers, {})
    span.end()
    expected = trace.get_current_span(propagate.extract({k: v.decode() for k, v in headers})).get_span_context()
    (done,) = exported.get_finished_spans()
    if expected.is_valid:
        assert done.parent == expected and done.context.trace_id == expected.trace_id
    else:
        assert done.parent is None and done.context.trace_id != 0


def test_tracestate_and_baggage_travel_on_to_the_result():
    provider, exported = _provider()
    spans = JobSpans(tracer_provider=provider)
    headers = SAMPLED + [("tracestate", b"vendor=abc"), ("baggage", b"tenant=acme")]
    process = spans.start_consumer("process t.infer", headers, {})
    send = spans.start_child("send t.results", SpanKind.PRODUCER, process, {})
    out = {k: v.decode() for k, v in spans.headers(send)}
    send.end(), process.end()
    assert out["tracestate"] == "vendor=abc"
    assert baggage.get_baggage("tenant", propagate.extract(out)) == "acme"
    assert trace.get_current_span(propagate.extract(out)).get_span_context().span_id == send.get_span_context().span_id


def test_without_the_sdk_the_api_tracer_is_used():
    spans = JobSpans(tracer_provider=NoOpTracerProvider())
    assert not spans.fast
    process = spans.start_consumer("process t.infer", SAMPLED, {})
    send = spans.start_child("send t.results", SpanKind.PRODUCER, process, {})
    assert not isinstance(send, JobSpan)
    assert dict(spans.headers(send))["traceparent"].decode().startswith(f"00-{TRACE_ID}-")


def test_an_ended_span_is_frozen_and_ends_once():
    provider, exported = _provider()
    span = JobSpans(tracer_provider=provider).start_consumer("process t.infer", SAMPLED, {"a": 1})
    span.end()
    span.set_attribute("b", 2), span.set_status(Status(StatusCode.ERROR)), span.end()
    (done,) = exported.get_finished_spans()
    assert dict(done.attributes) == {"a": 1} and done.status.status_code is StatusCode.UNSET


def test_the_batch_span_starts_its_own_trace_and_links_every_job():
    provider, exported = _provider()
    spans = JobSpans(tracer_provider=provider)
    jobs = [spans.start_consumer("process t.infer", SAMPLED, {}) for _ in range(3)]
    batch = spans.start_linked("infer vision", jobs, {"messaging.batch.message_count": 3})
    batch.end()
    (done,) = exported.get_finished_spans()
    assert done.parent is None and done.context.trace_id != int(TRACE_ID, 16) and done.kind is SpanKind.INTERNAL
    assert [link.context for link in done.links] == [job.get_span_context() for job in jobs]
    assert dict(done.attributes) == {"messaging.batch.message_count": 3}
