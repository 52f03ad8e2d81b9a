"""The worker core with fake runtimes: batching, bad input, failures, DLQ, priorities, spans."""

import threading
import time

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from aiaas.contract.codec import decode_result
from aiaas.contract.dead_letters import DLQ_HEADERS
from aiaas.contract.topics import ModelTopics
from aiaas.errors import PublishFailed
from aiaas.serving.worker import BatchWorker
from aiaas.tracing.conventions import inject_headers
from tests.fakes import FailingRuntime, Record, RecordingSink, SumRuntime, job_record

TOPICS = ModelTopics.of("vision", "p")


def make_worker(runtime=None, sink=None):
    return BatchWorker(runtime or SumRuntime(), sink or RecordingSink(), topics=TOPICS, dlq_topic="p.dlq",
                       group="p.vision", max_message_bytes=1 << 20)


def results(sink):
    return {decode_result(value, 1 << 20).job_id: decode_result(value, 1 << 20)
            for _, value, _, _ in sink.on(TOPICS.results)}


async def test_one_model_call_per_batch_and_one_result_per_job():
    runtime, sink = SumRuntime(), RecordingSink()
    await make_worker(runtime, sink).handle([job_record(i, [i, 1.0]) for i in range(5)])
    assert len(runtime.batches) == 1 and len(runtime.batches[0]) == 5
    got = results(sink)
    assert {k: r.outputs["sum"] for k, r in got.items()} == {f"job-{i}": i + 1.0 for i in range(5)}
    assert all(r.status == "ok" and r.model_version == "7" and r.timings.batch_size == 5 for r in got.values())
    assert sink.on("p.dlq") == []


async def test_bad_messages_become_error_results_and_dead_letters_while_the_rest_run():
    runtime, sink = SumRuntime(), RecordingSink()
    garbage = Record("p.vision.infer", 2, 41, b"bad-1", b"\x93\x01\x02")
    keyless = Record("p.vision.infer", 2, 42, None, b"\xc1")
    wrong_input = job_record(43, [1.0])
    wrong_input.value = wrong_input.value.replace(b"\xa1x", b"\xa1y")  # input named y, not x
    await make_worker(runtime, sink).handle([garbage, job_record(1, [2.0]), keyless, wrong_input])

    got = results(sink)
    assert got["job-1"].status == "ok" and got["job-1"].outputs["sum"] == 2.0
    assert got["bad-1"].status == "error" and got["bad-1"].error.type == "UndecodableMessage"
    assert got["job-43"].error.type == "InvalidJob" and "tensor x" in got["job-43"].error.message
    assert len(got) == 3  # the keyless garbage has no job id to answer
    dead = sink.on("p.dlq")
    assert len(dead) == 3
    headers = {h["aiaas.origin.offset"]: h for _, _, _, h in dead}
    assert set(headers) == {b"41", b"42", b"43"}
    assert set(DLQ_HEADERS) <= set(headers[b"41"])
    assert headers[b"41"]["aiaas.origin.topic"] == b"p.vision.infer"
    assert headers[b"41"]["aiaas.origin.partition"] == b"2"
    assert [value for _, value, _, h in dead if h["aiaas.origin.offset"] == b"42"] == [b"\xc1"]  # original bytes kept


async def test_a_failing_model_fails_its_batch_with_retriable_errors_and_the_worker_goes_on():
    sink = RecordingSink()
    await make_worker(FailingRuntime(), sink).handle([job_record(i, [1.0]) for i in range(3)])
    got = results(sink)
    assert {r.status for r in got.values()} == {"error"}
    assert all(r.error.type == "ModelFailure" and r.error.retriable and "GPU on fire" in r.error.message
               for r in got.values())
    assert len(sink.on("p.dlq")) == 3


async def test_expired_jobs_skip_the_model_and_pinned_unknown_versions_are_errors():
    runtime, sink = SumRuntime(), RecordingSink()
    await make_worker(runtime, sink).handle([
        job_record(1, [1.0], deadline=time.time() - 1),
        job_record(2, [1.0], model_version="99"),
        job_record(3, [1.0], model_version="production"),
    ])
    got = results(sink)
    assert got["job-1"].status == "expired"
    assert got["job-2"].error.type == "UnknownModelVersion"
    assert got["job-3"].status == "ok"
    assert runtime.batches == [[1.0]]


async def test_higher_priority_goes_first_in_the_batch():
    runtime = SumRuntime()
    await make_worker(runtime).handle([job_record(0, [1.0]), job_record(1, [2.0], priority=9),
                                       job_record(2, [3.0], priority=-1)])
    assert runtime.batches == [[2.0, 1.0, 3.0]]


async def test_results_go_to_reply_to_when_the_job_names_one():
    sink = RecordingSink()
    await make_worker(sink=sink).handle([job_record(0, [1.0], reply_to="p.vision.results.dashboard")])
    assert [s[0] for s in sink.sent] == ["p.vision.results.dashboard"]


async def test_spans_continue_the_publisher_trace_and_link_the_batch(spans):
    tracer = trace.get_tracer("test")
    records = []
    with tracer.start_as_current_span("send p.vision.infer", kind=SpanKind.PRODUCER) as publisher:
        for i in range(2):
            record = job_record(i, [1.0])
            record.headers = inject_headers()
            records.append(record)
    records[0].taken_ns = time.time_ns() - 250_000_000  # taken by the pipeline 250 ms ago, waited for its batch
    await make_worker().handle(records)

    finished = spans.get_finished_spans()
    process = [s for s in finished if s.name == "process p.vision.infer"]
    assert len(process) == 2
    assert process[0].start_time == records[0].taken_ns < process[1].start_time  # the other: taken at admission
    for span in process:
        assert span.kind == SpanKind.CONSUMER
        assert span.context.trace_id == publisher.get_span_context().trace_id
        assert span.parent.span_id == publisher.get_span_context().span_id
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.consumer.group.name"] == "p.vision"
        assert span.attributes["messaging.destination.partition.id"] == "0"
        assert "messaging.kafka.offset" in span.attributes and span.attributes["aiaas.job.id"].startswith("job-")
    (batch,) = [s for s in finished if s.name == "infer vision"]
    assert batch.attributes["messaging.batch.message_count"] == 2
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in process}
    sends = [s for s in finished if s.name == "send p.vision.results"]
    assert {s.parent.span_id for s in sends} == {s.context.span_id for s in process}
    assert all(s.kind == SpanKind.PRODUCER for s in sends)


async def test_a_sink_failure_propagates_so_the_batch_is_not_committed():
    class BrokenSink(RecordingSink):
        async def send(self, *args, **kwargs):
            raise ConnectionError("broker gone")

    with pytest.raises(PublishFailed) as failed:
        await make_worker(sink=BrokenSink()).handle([job_record(0, [1.0])])
    ((record, error),) = failed.value.failures  # the failing record, with the sink's own error
    assert record.offset == 0 and isinstance(error, ConnectionError)


async def test_outputs_the_contract_cannot_carry_fail_that_job_only():
    class OddRuntime(SumRuntime):
        def infer(self, items):
            return [{"sum": None} if i == 0 else {"sum": 1.0} for i in range(len(items))]

    sink = RecordingSink()
    await make_worker(OddRuntime(), sink).handle([job_record(0, [1.0]), job_record(1, [1.0])])
    got = results(sink)
    assert got["job-0"].status == "error" and got["job-0"].error.type == "ModelFailure"
    assert got["job-1"].status == "ok"


async def test_a_result_too_big_to_publish_becomes_an_error_result_and_a_dead_letter():
    class HugeRuntime(SumRuntime):
        def infer(self, items):
            return [{"blob": "x" * 5000} for _ in items]

    sink = RecordingSink()
    worker = BatchWorker(HugeRuntime(), sink, topics=TOPICS, dlq_topic="p.dlq", group="g", max_message_bytes=2000)
    await worker.handle([job_record(0, [1.0])])
    (result,) = [decode_result(v, 1 << 20) for _, v, _, _ in sink.on(TOPICS.results)]
    assert result.status == "error" and result.error.type == "PayloadTooLarge" and "2000" in result.error.message
    assert len(sink.on("p.dlq")) == 1


def test_a_reply_to_that_is_not_a_topic_name_is_refused_at_the_contract():
    from pydantic import ValidationError

    from aiaas.contract.envelopes import Job

    with pytest.raises(ValidationError):
        Job(job_id="j", model="vision", reply_to="bad topic!")


async def test_a_runtime_whose_prepared_item_is_none_still_answers_every_job():
    class NoItemRuntime(SumRuntime):
        def prepare(self, job):
            return None

        def infer(self, items):
            return [{"n": len(items)} for _ in items]

    sink = RecordingSink()
    await make_worker(NoItemRuntime(), sink).handle([job_record(i, [1.0]) for i in range(3)])
    assert {r.status for r in results(sink).values()} == {"ok"} and len(results(sink)) == 3


class ThreadRecordingRuntime(SumRuntime):
    """SumRuntime that records the thread of every model call and names where it computes."""

    def __init__(self, providers=None):
        super().__init__()
        self.threads = []
        if providers is not None:
            self.providers = providers

    def infer(self, items):
        self.threads.append(threading.get_ident())
        return super().infer(items)


def worker_calling(runtime, model_calls, model_instances=1):
    return BatchWorker(runtime, RecordingSink(), topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                       max_message_bytes=1 << 20, model_instances=model_instances, model_calls=model_calls)


@pytest.mark.parametrize(("model_calls", "providers", "instances", "on_loop"), [
    ("thread", None, 1, False),
    ("event-loop", None, 1, True),
    ("event-loop", ["CUDAExecutionProvider", "CPUExecutionProvider"], 2, True),  # asked for: as asked
    ("auto", ["CPUExecutionProvider"], 1, True),
    ("auto", ["torch cpu"], 1, True),
    ("auto", None, 1, False),  # a runtime that names no device: a model thread, never wrong
    ("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], 1, False),  # the loop works while the GPU computes
    ("auto", ["torch cuda"], 1, False),
    ("auto", ["CPUExecutionProvider"], 2, False),  # several instances' batches run at once, on their threads
])
async def test_model_calls_run_on_the_event_loop_or_a_model_thread_as_set(model_calls, providers, instances, on_loop):
    runtime = ThreadRecordingRuntime(providers)
    worker = worker_calling(runtime, model_calls, instances)
    assert worker.calls_on_event_loop(runtime) is on_loop
    await worker.handle([job_record(i, [i, 1.0]) for i in range(3)])
    assert runtime.threads and (runtime.threads[0] == threading.get_ident()) is on_loop
    assert {r.outputs["sum"] for r in results(worker._sink).values()} == {1.0, 2.0, 3.0}


async def test_a_model_failing_on_the_event_loop_fails_its_jobs_and_the_worker_goes_on():
    class PoisonedBy13(SumRuntime):
        def infer(self, items):
            if any(item.sum() == 13 for item in items):
                raise RuntimeError("GPU on fire")
            return super().infer(items)

    sink = RecordingSink()
    worker = BatchWorker(PoisonedBy13(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, model_calls="event-loop")
    await worker.handle([job_record(0, [13.0]), job_record(1, [1.0])])  # the batch fails, then each runs alone
    await worker.handle([job_record(i, [float(i)]) for i in range(5, 7)])
    got = results(sink)
    assert got["job-0"].status == "error" and got["job-0"].error.type == "ModelFailure"
    assert got["job-1"].status == "ok" and got["job-1"].outputs["sum"] == 1.0
    assert {got[f"job-{i}"].outputs["sum"] for i in (5, 6)} == {5.0, 6.0}


class BrokenProviders(SumRuntime):
    @property
    def providers(self):
        raise RuntimeError("the session is gone")


class ProvidersMethod(SumRuntime):
    def providers(self):
        return ["CPUExecutionProvider"]


@pytest.mark.parametrize("runtime_class", [BrokenProviders, ProvidersMethod])
async def test_a_runtime_that_cannot_say_where_it_computes_gets_a_model_thread_and_its_jobs_run(runtime_class):
    sink = RecordingSink()
    worker = BatchWorker(runtime_class(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, model_calls="auto")
    assert worker.calls_on_event_loop(worker.runtime) is False
    await worker.handle([job_record(i, [float(i)]) for i in range(2)])
    assert {r.status for r in results(sink).values()} == {"ok"}
