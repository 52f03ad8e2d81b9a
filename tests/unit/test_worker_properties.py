"""Property: whatever records arrive — any headers, key and value, on the infer, a tenant's or the retry topic —
the worker never raises and gives every record exactly one outcome: a result, a retry, or a dead letter (with an
error result when its job id is known), and never an `ok` result together with a dead letter.

Hypothesis generates the records: values are arbitrary bytes, valid jobs, or valid jobs with one field replaced by
an arbitrary msgpack value; headers mix arbitrary names and values (null included) with the ones aiaas reads.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.contract.topics import ModelTopics
from aiaas.serving.idempotency import OutcomeCache
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.worker import BatchWorker
from tests.fakes import Record, RecordingSink, SumRuntime

TOPICS = ModelTopics.of("vision", "p")
OUR_HEADERS = ["traceparent", "tracestate", "baggage", "aiaas.attempt", "aiaas.retry.not_before",
               "aiaas.origin.topic", "aiaas.origin.partition", "aiaas.origin.offset", "aiaas.error.type"]
FIELDS = ["job_id", "model", "kind", "task", "inputs", "priority", "deadline", "created_at", "reply_to", "tenant",
          "attributes", "model_version", "colour"]

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
header_values = st.none() | st.binary(max_size=80) | st.sampled_from([
    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"2", b"3", b"1e308", b"nan", b"-1",
    b"p.vision.infer", b"p.vision.infer.alice", b"0", b"99999999999999999999999", b"\xff\xfe",
])
headers = st.lists(st.tuples(st.sampled_from(OUR_HEADERS) | st.text(max_size=12), header_values), max_size=12)
keys = st.none() | st.binary(max_size=40) | st.text(max_size=20).map(str.encode)
topics = st.sampled_from([TOPICS.infer, TOPICS.tenant_infer("alice"), TOPICS.tenant_infer("bob"), TOPICS.retry])


def _good_job(job_id: str) -> dict:
    job = Job(job_id=job_id, model="vision", inputs={"x": Tensor.from_numpy(np.ones(3, np.float32))})
    return msgpack.unpackb(encode(job))


@st.composite
def values(draw, job_id: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "good", "field"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    envelope = _good_job(job_id)
    if kind == "field":
        envelope[draw(st.sampled_from(FIELDS))] = draw(msgpack_values)
    return msgpack.packb(envelope, use_bin_type=True)


@st.composite
def batches(draw) -> list[Record]:
    n = draw(st.integers(1, 8))
    out = []
    for offset in range(n):
        job_id = f"job-{offset}"
        key = draw(st.just(job_id.encode()) | keys)
        out.append(Record(draw(topics), 0, offset, key, draw(values(job_id)), draw(headers)))
    return out


def _run(records: list[Record]) -> RecordingSink:
    sink = RecordingSink()
    worker = BatchWorker(SumRuntime(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, retry=RetryPolicy(max_attempts=3), outcomes=OutcomeCache(64))
    try:
        asyncio.run(worker.handle(records))  # raises if anything escapes
    finally:
        worker.close()
    return sink


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_every_record_gets_exactly_one_outcome_and_nothing_escapes(records):
    sink = _run(records)
    sent = Counter(t if t in ("p.dlq", TOPICS.retry) else "results" for t, *_ in sink.sent)
    assert all(t in ("p.dlq", TOPICS.retry) or t.startswith(TOPICS.results) for t, *_ in sink.sent)
    statuses = Counter(decode_result(v, 1 << 20).status for t, v, _, _ in sink.sent if t.startswith(TOPICS.results))
    assert set(statuses) <= {"ok", "error", "expired"}
    # One outcome per record: an answer (ok/expired), a retry, or a dead letter (which an error result may go with).
    assert statuses["ok"] + statuses["expired"] + sent[TOPICS.retry] + sent["p.dlq"] == len(records)
    assert statuses["error"] <= sent["p.dlq"]
    for record in records:  # where a record's job is traceable by its id, it has no ok result and a dead letter
        ok = any(decode_result(v, 1 << 20).job_id == f"job-{record.offset}" and decode_result(v, 1 << 20).status == "ok"
                 for t, v, _, _ in sink.sent if t.startswith(TOPICS.results))
        dead = any(h["aiaas.job.id"] == f"job-{record.offset}".encode() for t, _, _, h in sink.sent if t == "p.dlq")
        assert not (ok and dead), record
