"""One batch's state between admission and publication: each consumed record's way through it (`JobInFlight`),
and what the worker reads of a record and writes through (`KafkaRecord`, `ResultSink`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.trace import Span

from aiaas.contract.dead_letters import Origin
from aiaas.contract.envelopes import Job, Result, job_id_of_key
from aiaas.errors import AiaasError
from aiaas.serving.idempotency import Outcome
from aiaas.serving.runtime import ModelRuntime

__all__ = ["KafkaRecord", "ResultSink", "JobInFlight", "ProcessedBatch", "record_key", "end_spans"]


class KafkaRecord(Protocol):
    """The parts of a consumed record the worker reads (aiokafka's ConsumerRecord has them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class ResultSink(Protocol):
    """Publishes one record and returns when the broker has acknowledged it.

    A sink may also offer `send_many(records) -> list[BaseException | None]` (records with `topic`, `value`,
    `key` and `headers`): the worker then hands it a whole batch's outcomes at once (`KafkaSink` does).
    """

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Send and await the acknowledgement."""
        ...


@dataclass
class JobInFlight:
    """One record's way through the batch."""

    record: KafkaRecord
    span: Span
    origin: Origin
    job: Job | None = None
    tenant: str | None = None  # from the topic the job arrived on, never from the job itself
    result_topic: str | None = None  # where its result goes, once its reply_to is checked
    runtime: ModelRuntime | None = None
    pending_version: str | None = None  # a pinned version that must be loaded before this job can run
    item: Any = None
    prepared: bool = False  # the runtime accepted the job (its item may be anything, even None)
    result: Result | None = None
    error: AiaasError | None = None
    attempt: int = 1  # 1 for a job from the infer topic, n for the n-th try from the retry topic
    retry: bool = False  # failed retriably with attempts left: goes to the retry topic, no result yet
    payload: bytes | None = None  # the encoded result, once sealed (or remembered from an earlier delivery)
    replayed: bool = False  # the outcome was remembered, not computed: the model did not run
    twin: JobInFlight | None = None  # an earlier record of the same job id in this batch: share its outcome
    bare: bool = False  # its outcome cannot be published: only a dead letter without key or body
    superseded: bool = False  # a retry record of a job already answered (or run in this batch): publishes nothing
    remembered: Outcome | None = None  # its outcome as put in the outcome memory, to confirm once delivered

    @property
    def job_id(self) -> str | None:
        """The job's id; before (or without) a valid envelope, the record's key when that is a valid job id."""
        if self.job is not None:
            return self.job.job_id
        return job_id_of_key(self.record.key)


def record_key(record: KafkaRecord) -> tuple[str, int, int]:
    """(topic, partition, offset): a consumed record's identity."""
    return record.topic, record.partition, record.offset


@dataclass
class ProcessedBatch:
    """A batch whose model call is done and whose outcomes wait to be published."""

    jobs: list[JobInFlight]

    @property
    def records(self) -> list[KafkaRecord]:
        """The consumed records of the batch, in the order they were taken."""
        return [job.record for job in self.jobs]


def end_spans(jobs: Sequence[JobInFlight]) -> None:
    for job in jobs:
        job.span.end()
