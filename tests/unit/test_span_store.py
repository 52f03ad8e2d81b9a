from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, set_span_in_context

from aiaas.span_store import SUFFIX, LocalSpanExporter, count_spans, job_trace, load_spans, render_trace


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
