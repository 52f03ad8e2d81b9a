"""The records that carry a batch's outcomes, built and sent: a result (and a dead letter when the job failed), a
dead letter alone when no result can be published, or the original job for the retry topic with the next attempt's
headers. Each gets a PRODUCER span under its job's span, ended when the broker answers (`OutgoingRecord.close`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from aiaas import tracing
from aiaas.contract.dead_letters import DLQ_KEY_DROPPED, DLQ_VALUE_DROPPED, dlq_headers
from aiaas.contract.priority import PRIORITY_HEADER
from aiaas.serving.batch import JobInFlight, KafkaRecord, ResultSink
from aiaas.serving.retries import RetryPolicy
from aiaas.tracing.job_spans import JobSpans

__all__ = ["OutcomeSender", "OutgoingRecord", "send_records"]

_MAX_ECHOED_KEY = 1024
"""A Kafka key longer than this is not echoed on the dead letter (it could make the record unsendable)."""


class OutcomeSender:
    """Builds each job's outcome records and sends a batch's at once through the sink."""

    def __init__(self, sink: ResultSink, spans: JobSpans, *, retry: RetryPolicy, retry_topic: str, dlq_topic: str,
                 max_message_bytes: int, result_topic: Callable[[JobInFlight], str]) -> None:
        self._sink = sink
        self._spans = spans
        self._retry = retry
        self._retry_topic = retry_topic
        self._dlq = dlq_topic
        self._max_bytes = max_message_bytes
        self._result_topic = result_topic

    async def send(self, jobs: Sequence[JobInFlight]) -> list[tuple[KafkaRecord, BaseException]]:
        """Send every job's outcome records; returns once the broker answered them all, with each job whose records
        were not all acknowledged (its consumed record, the first error). Every PRODUCER span is ended, also when
        this raises (cancelled, or a bug)."""
        outgoing: list[OutgoingRecord] = []
        try:
            for job in jobs:
                outgoing += self._outgoing(job)
            errors = await self._send_all(outgoing)
        except BaseException as exc:  # cancelled (a drain timed out) or a bug: no span is left open
            for record in outgoing:
                record.close(exc)
            raise
        for record, error in zip(outgoing, errors, strict=False):
            record.close(error)
        failed: dict[int, tuple[KafkaRecord, BaseException]] = {}
        for record, error in zip(outgoing, errors, strict=False):
            if error is not None:
                failed.setdefault(id(record.job), (record.job.record, error))
        return list(failed.values())

    def _outgoing(self, job: JobInFlight) -> list[OutgoingRecord]:
        """The records that carry a job's outcome, each with its PRODUCER span (started here) under the job's span.

        A result (and a dead letter if the job failed); a dead letter alone when the outcome cannot be published;
        the original job for the retry topic, with the next attempt's headers, when it failed retriably.
        """
        if job.bare:
            return [self._dead_letter(job, bare=True)]
        if job.superseded:
            return []
        if job.retry:
            topic = self._retry_topic
            attributes = tracing.producer_attributes(topic, job_id=job.job_id) | {tracing.ATTEMPT: job.attempt + 1}
            assert job.error is not None  # `_fail` sets both
            headers = self._retry.retry_headers(job.origin, job.error, job.attempt)
            headers += [(key, value) for key, value in job.record.headers or () if key == PRIORITY_HEADER]  # checked
            return [self._record(job, topic, job.record.value or b"", job.record.key, headers, attributes)]
        out = []
        if job.payload is not None and job.job_id is not None:
            topic = self._result_topic(job)
            out.append(self._record(job, topic, job.payload, job.job_id.encode(), [],
                                    tracing.producer_attributes(topic, job_id=job.job_id)))
        if job.error is not None:
            out.append(self._dead_letter(job))
        return out

    def _dead_letter(self, job: JobInFlight, bare: bool = False) -> OutgoingRecord:
        """The original bytes with origin and error headers; `bare`: headers only (the broker refused more)."""
        assert job.error is not None  # a dead letter says why the job failed
        headers = dlq_headers(job.record, job.error, job.job_id, job.attempt, origin=job.origin)
        value, key = job.record.value or b"", job.record.key
        if bare or len(value) > self._max_bytes:  # too big to publish again: keep the headers, drop the body
            headers.append((DLQ_VALUE_DROPPED, str(len(value)).encode()))
            value = b""
        if key is not None and (bare or len(key) > _MAX_ECHOED_KEY):
            headers.append((DLQ_KEY_DROPPED, str(len(key)).encode()))
            key = None
        return self._record(job, self._dlq, value, key, headers,
                            tracing.producer_attributes(self._dlq, job_id=job.job_id))

    def _record(self, job: JobInFlight, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
                attributes: dict[str, AttributeValue]) -> OutgoingRecord:
        span = self._spans.start_child(f"send {topic}", SpanKind.PRODUCER, job.span, attributes)
        return OutgoingRecord(job, topic, value, key, headers + self._spans.headers(span), span)

    async def _send_all(self, outgoing: list[OutgoingRecord]) -> list[BaseException | None]:
        return await send_records(self._sink, outgoing)


async def send_records(sink: ResultSink, outgoing: Sequence[OutgoingRecord]) -> list[BaseException | None]:
    """Send every record at once; per record, None once the broker acknowledged it, or what went wrong."""
    send_many = getattr(sink, "send_many", None)
    if send_many is not None:
        errors: list[BaseException | None] = await send_many(outgoing)
        return errors
    sent = await asyncio.gather(*(sink.send(r.topic, r.value, key=r.key, headers=r.headers) for r in outgoing),
                                return_exceptions=True)
    return [exc if isinstance(exc, BaseException) else None for exc in sent]


@dataclass(slots=True)
class OutgoingRecord:
    """One record to publish for a job: a result, a dead letter or a retry, with its open PRODUCER span."""

    job: JobInFlight
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    span: Span

    def close(self, error: BaseException | None) -> None:
        """End the span; a failed send is recorded on it as the SDK's `start_as_current_span` would."""
        if error is not None:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()
