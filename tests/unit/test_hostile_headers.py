"""Hostile Kafka headers, keys and reply topics: each record ends in one outcome and the worker goes on.

The named cases from the field (a null `traceparent` or `aiaas.attempt` used to stop the service for good on that
record; `reply_to: "."` rewound its partition for ever), checked through the worker core with a fake runtime.
"""

from __future__ import annotations

import math
import time

import msgpack
import pytest

from aiaas.contract.codec import decode_result
from aiaas.contract.dead_letters import Origin
from aiaas.contract.headers import HeaderLimits, read_headers
from aiaas.contract.reply_topics import ReplyTopics
from aiaas.contract.topics import ModelTopics
from aiaas.errors import InvalidHeaders, RefusedReplyTo
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.worker import BatchWorker
from tests.fakes import Record, RecordingSink, SumRuntime, job_record

TOPICS = ModelTopics.of("vision", "p")
GOOD_PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def make_worker(sink, **kwargs) -> BatchWorker:
    return BatchWorker(SumRuntime(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                       max_message_bytes=1 << 20, **kwargs)


def outcome_of(sink: RecordingSink, job_id: str) -> tuple[str | None, str | None]:
    """(result status, dead-letter error type) of one job id in what the worker sent."""
    statuses = [decode_result(v, 1 << 20) for t, v, _, _ in sink.sent if t.startswith(TOPICS.results)]
    status = [r.status for r in statuses if r.job_id == job_id]
    dead = [h["aiaas.error.type"].decode() for _, _, _, h in sink.on("p.dlq") if h["aiaas.job.id"] == job_id.encode()]
    assert len(status) <= 1 and len(dead) <= 1, (status, dead)
    return (status[0] if status else None), (dead[0] if dead else None)


HOSTILE_HEADERS = {
    "null_traceparent": [("traceparent", None)],
    "null_tracestate": [("traceparent", GOOD_PARENT), ("tracestate", None)],
    "null_baggage": [("baggage", None)],
    "null_aiaas_header": [("aiaas.attempt", None)],
    "traceparent_not_utf8": [("traceparent", b"\xff\xfe" * 20)],
    "traceparent_junk": [("traceparent", b"hello")],
    "traceparent_zero_ids": [("traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")],
    "traceparent_version_ff": [("traceparent", GOOD_PARENT.replace(b"00-", b"ff-", 1))],
    "traceparent_twice": [("traceparent", GOOD_PARENT), ("traceparent", GOOD_PARENT)],
    "traceparent_str_value": [("traceparent", GOOD_PARENT.decode())],
    "tracestate_control_chars": [("traceparent", GOOD_PARENT), ("tracestate", b"a=\x00\x01")],
    "tracestate_too_long": [("traceparent", GOOD_PARENT), ("tracestate", b"a=" + b"b" * 600)],
    "baggage_too_long": [("baggage", b"k=" + b"v" * 9000)],
    "aiaas_header_control_chars": [("aiaas.note", b"line\nbreak")],
    "aiaas_header_not_utf8": [("aiaas.origin.topic", b"\xc3\x28")],
    "thousands_of_headers": [(f"h{i}", b"x") for i in range(5000)],
    "huge_header_value": [("x-blob", b"x" * 100_000)],
    "priority_not_a_number": [("aiaas.priority", b"high")],
    "priority_out_of_range": [("aiaas.priority", b"1000")],
    "priority_null": [("aiaas.priority", None)],
    "header_not_a_pair": [("traceparent",)],
    "header_key_not_text": [(b"traceparent", GOOD_PARENT)],
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
async def test_hostile_headers_end_as_an_error_result_and_a_dead_letter_and_the_next_job_runs(name):
    sink = RecordingSink()
    bad = job_record(0, [1.0])
    bad.headers = HOSTILE_HEADERS[name]
    await make_worker(sink).handle([bad, job_record(1, [2.0])])
    assert outcome_of(sink, "job-0") == ("error", "InvalidHeaders")
    assert outcome_of(sink, "job-1") == ("ok", None)


async def test_headers_aiaas_does_not_read_may_hold_anything_kafka_allows():
    sink = RecordingSink()
    record = job_record(0, [1.0])
    record.headers = [("x-null", None), ("x-binary", b"\xff\x00\xfe"), ("traceparent", GOOD_PARENT)]
    await make_worker(sink).handle([record])
    assert outcome_of(sink, "job-0") == ("ok", None)


def test_read_headers_keeps_only_what_aiaas_reads_and_the_limits_are_settings():
    headers = read_headers([("traceparent", GOOD_PARENT), ("x-other", None), ("aiaas.attempt", b"2")])
    assert headers.values == {"traceparent": GOOD_PARENT.decode(), "aiaas.attempt": "2"}
    assert headers.trace_context() == [("traceparent", GOOD_PARENT)]
    with pytest.raises(InvalidHeaders, match="more than 3 headers"):
        read_headers([("a", b"")] * 4, HeaderLimits(max_headers=3))
    with pytest.raises(InvalidHeaders, match="more than 100 bytes"):
        read_headers([("a", b"x" * 200)], HeaderLimits(max_header_bytes=100))
    # A later W3C version may add fields after the four of version 00.
    assert read_headers([("traceparent", GOOD_PARENT.replace(b"00-", b"01-", 1) + b"-future")]).get("traceparent")


def _retry_record(headers) -> Record:
    record = job_record(0, [1.0], topic=TOPICS.retry)
    record.headers = headers
    return record


def _retry_headers(**overrides: bytes | None) -> list[tuple[str, bytes | None]]:
    origin = Origin(TOPICS.infer, 1, 7)
    good = dict(RetryPolicy().retry_headers(origin, InvalidHeaders("x"), attempt=1))
    return [(k, v) for k, v in (good | overrides).items()]


@pytest.mark.parametrize("overrides", [
    {"aiaas.attempt": None}, {"aiaas.attempt": b"two"}, {"aiaas.attempt": b"-1"}, {"aiaas.attempt": b"1"},
    {"aiaas.attempt": b"9" * 40}, {"aiaas.retry.not_before": b"nan"}, {"aiaas.retry.not_before": b"inf"},
    {"aiaas.retry.not_before": b"-inf"}, {"aiaas.retry.not_before": str(time.time() + 86_400 * 365).encode()},
    {"aiaas.retry.not_before": b"soon"}, {"aiaas.origin.topic": b"p.text.infer"}, {"aiaas.origin.topic": b""},
    {"aiaas.origin.partition": b"-3"}, {"aiaas.origin.offset": b"1e3"},
], ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items())[:60])
async def test_retry_records_with_headers_that_are_not_ours_are_dead_letters_not_stuck(overrides):
    policy = RetryPolicy(max_attempts=3, max_backoff_s=10)
    record = _retry_record(_retry_headers(**overrides))
    due = policy.due_at(record)
    assert due is None or (math.isfinite(due) and due <= time.time() + 400)  # the pipeline never waits for ever
    sink = RecordingSink()
    await make_worker(sink, retry=policy).handle([record])
    assert outcome_of(sink, "job-0")[1] in ("InvalidHeaders", "InvalidJob")


async def test_a_dead_letter_redriven_to_the_infer_topic_runs_as_a_first_attempt():
    sink = RecordingSink()
    record = job_record(0, [1.0])
    record.headers = _retry_headers(**{"aiaas.attempt": b"3", "aiaas.error.type": b"ModelFailure"})
    await make_worker(sink, retry=RetryPolicy(max_attempts=3)).handle([record])
    assert outcome_of(sink, "job-0") == ("ok", None)


@pytest.mark.parametrize("key", [b"job\x00zero", b"job\nnewline", b"\x1b[31mred", b"\xff\xfe", b"k" * 600])
async def test_keys_that_cannot_be_job_ids_get_a_dead_letter_without_a_result(key):
    sink = RecordingSink()
    await make_worker(sink).handle([Record(TOPICS.infer, 0, 5, key, b"\xc1junk"), job_record(6, [1.0])])
    assert [t for t, *_ in sink.sent if t.startswith(TOPICS.results)] == [TOPICS.results]  # only job-6's result
    (dead,) = sink.on("p.dlq")
    assert dead[3]["aiaas.job.id"] == b"" and dead[3]["aiaas.origin.offset"] == b"5"


async def test_a_job_id_with_control_characters_is_invalid():
    sink = RecordingSink()
    envelope = {"job_id": "evil\r\nid", "model": "vision", "inputs": {}}
    await make_worker(sink).handle([Record(TOPICS.infer, 0, 0, b"key-ok", msgpack.packb(envelope))])
    assert outcome_of(sink, "key-ok") == ("error", "InvalidJob")


# -- where results may go ------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply_to", [".", "..", "__consumer_offsets", "__transaction_state", "p.dlq", "p.models",
                                      "p.vision.infer", "p.vision.retry", "p.vision.train", "p.vision.infer.alice",
                                      "p.vision.infer-urgent", "p.vision.infer-urgent.alice",
                                      "p.text.results", "p.text.results.x", "someone.elses.topic",
                                      "p.vision.results.a.b", "p.vision.resultsX"])
async def test_a_refused_reply_to_gets_an_error_result_on_the_results_topic_and_a_dead_letter(reply_to):
    sink = RecordingSink()
    await make_worker(sink).handle([job_record(0, [1.0], reply_to=reply_to), job_record(1, [1.0])])
    assert [t for t, *_ in sink.sent] == [TOPICS.results, "p.dlq", TOPICS.results]
    assert outcome_of(sink, "job-0") == ("error", "RefusedReplyTo")


def test_the_reply_to_pattern_is_an_operator_setting_but_internal_topics_stay_refused():
    replies = ReplyTopics(TOPICS, "p", r"{results}|team-[a-z]+\.inbox|p\.dlq")
    assert replies.result_topic("team-red.inbox", None) == "team-red.inbox"
    assert replies.result_topic(None, "alice") == "p.vision.results.alice"
    with pytest.raises(RefusedReplyTo, match="internal"):
        replies.result_topic("p.dlq", None)
    with pytest.raises(RefusedReplyTo):
        replies.result_topic("p.vision.results.dashboard", None)  # not in this pattern
    with pytest.raises(ValueError, match="regular expression"):
        ReplyTopics(TOPICS, "p", "(")


def test_a_tenant_is_answered_only_on_its_own_results_topics():
    replies = ReplyTopics(TOPICS, "p")
    assert replies.result_topic("p.vision.results.alice.dash", "alice") == "p.vision.results.alice.dash"
    with pytest.raises(RefusedReplyTo):
        replies.result_topic("p.vision.results.bob", "alice")
    with pytest.raises(RefusedReplyTo):
        replies.result_topic("p.vision.results", "alice")


class _Catalog:
    def __init__(self, existing: set[str]) -> None:
        self.existing, self.asked = existing, []

    async def missing(self, topics: set[str]) -> set[str]:
        self.asked.append(set(topics))
        return topics - self.existing


async def test_a_reply_topic_that_does_not_exist_is_refused_before_the_job_runs():
    sink, runtime = RecordingSink(), SumRuntime()
    catalog = _Catalog({TOPICS.results})
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision", max_message_bytes=1 << 20,
                         topic_catalog=catalog)
    await worker.handle([job_record(0, [1.0], reply_to="p.vision.results.nobody"), job_record(1, [2.0])])
    assert outcome_of(sink, "job-0") == ("error", "RefusedReplyTo")
    assert outcome_of(sink, "job-1") == ("ok", None)
    assert runtime.batches == [[2.0]]  # the refused job never reached the model
    assert catalog.asked == [{TOPICS.results, "p.vision.results.nobody"}]  # one question per batch


# -- tenants -----------------------------------------------------------------------------------------------

async def test_a_tenant_is_the_topic_a_job_came_from_never_a_field_it_fills_in():
    sink = RecordingSink()
    alice = job_record(0, [1.0], topic=TOPICS.tenant_infer("alice"))
    forged = job_record(1, [1.0], topic=TOPICS.tenant_infer("alice"), tenant="bob")
    await make_worker(sink).handle([alice, forged])
    assert [t for t, *_ in sink.sent if t.startswith(TOPICS.results)] == ["p.vision.results.alice"] * 2
    assert outcome_of(sink, "job-0") == ("ok", None)
    assert outcome_of(sink, "job-1") == ("error", "InvalidJob")


async def test_a_job_id_reused_by_another_tenant_never_gets_the_first_tenants_outcome():
    from aiaas.serving.idempotency import OutcomeCache

    sink = RecordingSink()
    worker = make_worker(sink, outcomes=OutcomeCache(100))
    await worker.handle([job_record(0, [1.0], topic=TOPICS.tenant_infer("alice"))])
    await worker.handle([job_record(0, [5.0], topic=TOPICS.tenant_infer("bob"))])
    await worker.handle([job_record(0, [9.0], topic=TOPICS.tenant_infer("alice"))])
    sums = [(t, decode_result(v, 1 << 20).outputs["sum"]) for t, v, _, _ in sink.sent]
    assert sums == [("p.vision.results.alice", 1.0), ("p.vision.results.bob", 5.0), ("p.vision.results.alice", 1.0)]
