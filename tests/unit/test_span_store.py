import os
import time

import msgpack
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, set_span_in_context

from aiaas.settings import HomeSettings
from aiaas.tracing.job_spans import JobSpans
from aiaas.tracing.setup import setup_tracing
from aiaas.tracing.span_store import (
    SUFFIX,
    LocalSpanExporter,
    LocalSpanProcessor,
    _stored,
    count_spans,
    job_trace,
    load_spans,
    render_trace,
)


def provider_for(directory, service):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(LocalSpanExporter(directory, service)))
    return provider.get_tracer("t")


def test_a_job_trace_is_rebuilt_across_processes_with_linked_batch_span(tmp_path):
    client, worker = provider_for(tmp_path, "client"), provider_for(tmp_path, "worker")
    with client.start_as_current_span("send a.infer", kind=SpanKind.PRODUCER, attributes={"aiaas.job.id": "J"}) as send:
        pass
    process = worker.start_span("process a.infer", context=set_span_in_context(send), kind=SpanKind.CONSUMER,
                                attributes={"aiaas.job.id": "J"})
    with worker.start_as_current_span("infer vision", links=[Link(process.get_span_context())],
                                      attributes={"messaging.batch.message_count": 4}):
        pass
    with worker.start_as_current_span("send a.results", context=set_span_in_context(process), kind=SpanKind.PRODUCER):
        pass
    process.end()
    with client.start_as_current_span("unrelated", attributes={"aiaas.job.id": "other"}):
        pass

    spans = job_trace(load_spans(tmp_path), "J")
    assert sorted(s.name for s in spans) == ["infer vision", "process a.infer", "send a.infer", "send a.results"]
    text = render_trace(spans)
    lines = text.splitlines()
    assert "send a.infer [producer, client]" in lines[2]
    assert lines[3].split("  ")[-1].strip().startswith("process a.infer") or "  process a.infer" in lines[3]
    assert "~> infer vision" in text and "batch=4" in text
    assert "unrelated" not in text


def test_a_half_written_record_is_skipped_and_the_ones_before_it_kept(tmp_path):
    tracer = provider_for(tmp_path, "svc")
    for name in ("first", "second"):
        with tracer.start_as_current_span(name, attributes={"aiaas.job.id": "J"}):
            pass
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    path.write_bytes(path.read_bytes()[:-5])
    assert [s.name for s in load_spans(tmp_path)] == ["first"]
    assert count_spans(path) == 1


def test_a_half_written_line_of_an_older_jsonl_store_is_skipped(tmp_path):
    (tmp_path / "x-1.jsonl").write_text('{"trace_id": "1"\n')
    assert load_spans(tmp_path) == []


def test_job_spans_are_stored_with_the_ids_links_and_attributes_they_carry(tmp_path):
    provider = TracerProvider(resource=Resource.create({"service.name": "worker"}))
    provider.add_span_processor(SimpleSpanProcessor(LocalSpanExporter(tmp_path, "worker")))
    spans = JobSpans(tracer_provider=provider)
    headers = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01")]
    process = spans.start_consumer("process a.infer", headers, {"aiaas.job.id": "J", "messaging.kafka.offset": 7})
    batch = spans.start_linked("infer vision", [process], {"messaging.batch.message_count": 1})
    batch.set_status(Status(StatusCode.ERROR, "boom"))
    batch.end()
    process.end()

    stored = {s.name: s for s in load_spans(tmp_path)}
    ctx = process.get_span_context()
    assert (stored["process a.infer"].trace_id, stored["process a.infer"].span_id) == (
        "0af7651916cd43dd8448eb211c80319c", f"{ctx.span_id:016x}")
    assert stored["process a.infer"].parent_id == "00f067aa0ba902b7"
    assert stored["process a.infer"].kind == "CONSUMER" and stored["process a.infer"].service == "worker"
    assert stored["process a.infer"].attributes == {"aiaas.job.id": "J", "messaging.kafka.offset": 7}
    assert stored["infer vision"].links == [["0af7651916cd43dd8448eb211c80319c", f"{ctx.span_id:016x}"]]
    assert stored["infer vision"].parent_id is None and stored["infer vision"].status == "ERROR"
    assert [s.name for s in job_trace(load_spans(tmp_path), "J")] == ["process a.infer", "infer vision"]


def test_a_store_of_an_earlier_version_with_hex_ids_is_still_read(tmp_path):
    record = ["0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7", None, "send a.infer", "PRODUCER", "client",
              1, 2, "UNSET", {"aiaas.job.id": "J"}, [["0af7651916cd43dd8448eb211c80319d", "00f067aa0ba902b8"]]]
    (tmp_path / f"client-1{SUFFIX}").write_bytes(msgpack.packb(record))
    (span,) = load_spans(tmp_path)
    assert span.trace_id == record[0] and span.span_id == record[1] and span.links == record[10]


def local_store(directory, service, **kwargs):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    processor = LocalSpanProcessor(LocalSpanExporter(directory, service), **kwargs)
    provider.add_span_processor(processor)
    return provider, processor


def test_the_local_processor_stores_every_span_once_flushed_and_at_shutdown(tmp_path):
    provider, processor = local_store(tmp_path, "svc", flush_interval_s=3600)
    tracer = provider.get_tracer("t")
    for name in ("first", "second"):
        with tracer.start_as_current_span(name, attributes={"aiaas.job.id": "J"}):
            pass
    assert load_spans(tmp_path) == []  # packed, waiting for the next append
    processor.force_flush()
    assert [s.name for s in load_spans(tmp_path)] == ["first", "second"]
    with tracer.start_as_current_span("third"):
        pass
    provider.shutdown()
    assert [s.name for s in load_spans(tmp_path)] == ["first", "second", "third"]
    with tracer.start_as_current_span("after shutdown"):
        pass
    processor.force_flush()
    assert len(load_spans(tmp_path)) == 3


def test_the_local_processor_appends_on_its_own_thread(tmp_path):
    provider, _ = local_store(tmp_path, "svc", flush_interval_s=0.05)
    with provider.get_tracer("t").start_as_current_span("one"):
        pass
    deadline = time.monotonic() + 5
    while not load_spans(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [s.name for s in load_spans(tmp_path)] == ["one"]
    provider.shutdown()


def test_the_local_processor_drops_and_counts_spans_beyond_its_bound(tmp_path):
    provider, processor = local_store(tmp_path, "svc", flush_interval_s=3600, max_pending=2)
    tracer = provider.get_tracer("t")
    for name in ("a", "b", "c"):
        with tracer.start_as_current_span(name):
            pass
    assert processor.dropped == 1
    provider.shutdown()
    assert [s.name for s in load_spans(tmp_path)] == ["a", "b"]


def test_setup_tracing_stores_locally_through_the_local_processor(tmp_path, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)  # leave the process's provider alone
    provider = setup_tracing("svc", home=HomeSettings(home=tmp_path))
    with provider.get_tracer("t").start_as_current_span("stored"):
        pass
    provider.shutdown()
    assert [s.name for s in load_spans(tmp_path / "spans")] == ["stored"]
    assert any(isinstance(p, LocalSpanProcessor) for p in provider._active_span_processor._span_processors)


class RecordOnly(Sampler):
    def should_sample(self, *args, **kwargs):
        return SamplingResult(Decision.RECORD_ONLY)

    def get_description(self):
        return "record only"


def test_the_local_processor_stores_only_sampled_spans(tmp_path):
    provider = TracerProvider(sampler=RecordOnly())
    processor = LocalSpanProcessor(LocalSpanExporter(tmp_path, "svc"), flush_interval_s=3600)
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("recorded, not sampled") as span:
        assert span.is_recording()
    provider.shutdown()
    assert load_spans(tmp_path) == []


def test_a_record_that_is_not_a_span_is_skipped_and_the_next_one_read(tmp_path):
    good = [bytes(16), bytes(8), None, "kept", "INTERNAL", "svc", 1, 2, "UNSET", {}, []]
    (tmp_path / f"svc-1{SUFFIX}").write_bytes(msgpack.packb([1, 2]) + msgpack.packb(["x"]) + msgpack.packb(good))
    assert [s.name for s in load_spans(tmp_path)] == ["kept"]


def test_a_span_that_cannot_be_packed_is_counted_and_its_end_does_not_fail(tmp_path):
    provider, processor = local_store(tmp_path, "svc", flush_interval_s=3600)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("bad", attributes={"text": "\ud800"}):  # a lone surrogate: not UTF-8
        pass
    with tracer.start_as_current_span("good"):
        pass
    provider.shutdown()
    assert processor.dropped == 1
    assert [s.name for s in load_spans(tmp_path)] == ["good"]


def test_a_failed_write_loses_only_those_spans_counts_them_and_does_not_fail_the_shutdown(tmp_path):
    provider, processor = local_store(tmp_path / "spans", "svc", flush_interval_s=3600)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("lost"):
        pass
    (tmp_path / "spans").rename(tmp_path / "moved")  # the store's directory is gone
    assert processor.force_flush() is False
    assert processor.dropped == 1
    (tmp_path / "spans").mkdir()
    with tracer.start_as_current_span("kept"):
        pass
    provider.shutdown()
    assert [s.name for s in load_spans(tmp_path / "spans")] == ["kept"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_writes_its_own_file_without_the_parents_pending_spans(tmp_path):
    provider, processor = local_store(tmp_path, "svc", flush_interval_s=3600)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent's"):
        pass
    pid = os.fork()
    if pid == 0:  # the child
        try:
            with tracer.start_as_current_span("child's"):
                pass
            processor.force_flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    provider.shutdown()
    by_file = {path.name: [s.name for s in load_spans_of(path)] for path in tmp_path.glob(f"*{SUFFIX}")}
    assert by_file == {f"svc-{os.getpid()}{SUFFIX}": ["parent's"], f"svc-{pid}{SUFFIX}": ["child's"]}


def load_spans_of(path):
    with path.open("rb") as stored:
        return [span for record in msgpack.Unpacker(stored, raw=False) for span in _stored(record)]
