"""The worker core shared by every model type: decode → validate → one model call → one result per job.

A batch goes through two stages: `run` (decode, validate, one model call) and `publish`
(every result and dead letter, returning only once the broker acknowledged them all). The
service pipelines them — batch N+1 is in the model while batch N's results are in flight (a call on
the event loop, `model_calls`, lets them go on between batches) —
and commits a record's offset only after its batch's `publish` returned (at-least-once). Kafka stays at the edge:
records come in, `ResultSink.send` goes out, and the model is a `ModelRuntime` that knows nothing of Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from aiaas import tracing
from aiaas.contract.codec import decode_job, encode
from aiaas.contract.dead_letters import Origin, dlq_headers
from aiaas.contract.envelopes import (
    ErrorInfo,
    Job,
    Result,
    Tensor,
    Timings,
    is_plain_value,
    job_id_of_key,
    trusted,
)
from aiaas.contract.headers import NO_HEADERS, HeaderLimits, read_headers
from aiaas.contract.reply_topics import ReplyTopics, TopicCatalog
from aiaas.contract.topics import ModelTopics
from aiaas.errors import (
    AiaasError,
    InvalidHeaders,
    InvalidJob,
    ModelFailure,
    PayloadTooLarge,
    PublishFailed,
    RefusedReplyTo,
    Undeliverable,
    UnknownModelVersion,
    UnparseableRecord,
)
from aiaas.serving.idempotency import Outcome, OutcomeCache
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.runtime import ModelRuntime, Outputs, computes_on_cpu
from aiaas.serving.runtimes import RuntimeSet
from aiaas.settings import ModelCalls
from aiaas.tracing.job_spans import JobSpans

__all__ = ["BatchWorker", "ProcessedBatch", "PublishFailed", "ResultSink", "KafkaRecord", "record_key"]

_MAX_ECHOED_KEY = 1024
"""A Kafka key longer than this is not echoed on the dead letter (it could make the record unsendable)."""

log = logging.getLogger("aiaas.worker")


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
class _InFlight:
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
    twin: _InFlight | None = None  # an earlier record of the same job id in this batch: share its outcome
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

    jobs: list[_InFlight]

    @property
    def records(self) -> list[KafkaRecord]:
        """The consumed records of the batch, in the order they were taken."""
        return [job.record for job in self.jobs]


def _end_spans(jobs: Sequence[_InFlight]) -> None:
    for job in jobs:
        job.span.end()


class BatchWorker:
    """Runs batches of jobs of one model type through a runtime and publishes their outcomes."""

    def __init__(
        self,
        runtime: ModelRuntime | RuntimeSet,
        sink: ResultSink,
        *,
        topics: ModelTopics,
        dlq_topic: str,
        group: str,
        max_message_bytes: int,
        retry: RetryPolicy | None = None,
        outcomes: OutcomeCache | None = None,
        model_instances: int = 1,
        model_calls: ModelCalls = "thread",
        header_limits: HeaderLimits = HeaderLimits(),
        reply_topics: ReplyTopics | None = None,
        topic_catalog: TopicCatalog | None = None,
    ) -> None:
        self.runtimes = runtime if isinstance(runtime, RuntimeSet) else RuntimeSet(runtime)
        self.retry = retry or RetryPolicy(max_attempts=1)
        self.outcomes = outcomes if outcomes is not None else OutcomeCache(0)
        self._sink = sink
        self._topics = topics
        self._dlq = dlq_topic
        self._group = group
        self._max_bytes = max_message_bytes
        self._spans = JobSpans()
        self._tracer = self._spans.tracer
        # Model calls on threads (unless `model_calls` puts them on the event loop), so fetching and publishing go
        # on meanwhile; one thread per model instance.
        self._executor = ThreadPoolExecutor(max_workers=model_instances,
                                            thread_name_prefix=f"{self.runtimes.model}-model")
        self._model_calls = model_calls
        self._instances = model_instances
        self._header_limits = header_limits
        self.reply_topics = reply_topics or ReplyTopics(topics, topics.infer.rsplit(".", 2)[0])
        self._catalog = topic_catalog

    @property
    def runtime(self) -> ModelRuntime:
        """The runtime serving unpinned jobs now."""
        return self.runtimes.current

    async def handle(self, records: Sequence[KafkaRecord]) -> None:
        """Process one batch; returns once every outcome is acknowledged by the broker."""
        await self.publish(await self.run(records))

    async def run(self, records: Sequence[KafkaRecord],
                  undeliverable: dict[tuple[str, int, int], str] | None = None) -> ProcessedBatch:
        """Stage 1: decode and validate every record, then one model call for the valid ones.

        The returned batch holds one outcome per job; its spans stay open until `publish`.
        `undeliverable` maps `record_key`s whose outcome the broker refused for good to the reason:
        those records get only a bare dead letter.
        """
        self.runtimes.swap_if_ready()  # a new production version takes over between batches, never inside one
        picked_at = time.time()
        batch = [self._admit(record, picked_at, (undeliverable or {}).get(record_key(record))) for record in records]
        _pair_twins(batch)
        try:
            await self._check_result_topics(batch, picked_at)
            await self._load_pinned(batch, picked_at)
            runnable = sorted((job for job in batch if job.prepared and job.result is None), key=_highest_first)
            groups: dict[int, list[_InFlight]] = {}
            for job in runnable:
                groups.setdefault(id(job.runtime), []).append(job)
            for group in groups.values():
                await self._infer(group, picked_at)
            self._seal(batch)
        except BaseException:
            _end_spans(batch)
            raise
        return ProcessedBatch(batch)

    async def publish(self, batch: ProcessedBatch) -> None:
        """Stage 2: send every result and dead letter; returns once the broker acknowledged them all.

        Raises PublishFailed, naming the records whose outcomes were not acknowledged.
        """
        outgoing: list[_Outgoing] = []
        try:
            for job in batch.jobs:
                outgoing += self._outgoing(job)
            errors = await self._send_all(outgoing)
        except BaseException as exc:  # cancelled (a drain timed out) or a bug: no span is left open
            for record in outgoing:
                record.close(exc)
            _end_spans(batch.jobs)
            raise
        for record, error in zip(outgoing, errors, strict=False):
            record.close(error)
        _end_spans(batch.jobs)
        failed: dict[int, tuple[KafkaRecord, BaseException]] = {}
        for record, error in zip(outgoing, errors, strict=False):
            if error is not None:
                failed.setdefault(id(record.job), (record.job.record, error))
        if failed:
            raise PublishFailed(list(failed.values()))

    async def dead_letter_undeliverable(self, refused: Sequence[tuple[KafkaRecord, str]]) -> None:
        """A bare dead letter (headers only) for each record whose outcome the broker refused for good, with the
        reason; returns once the broker acknowledged them all (raises PublishFailed otherwise)."""
        picked_at = time.time()
        await self.publish(ProcessedBatch([self._admit(record, picked_at, reason) for record, reason in refused]))

    def delivered(self, batch: ProcessedBatch) -> None:
        """The batch's outcomes are on their topics (acknowledged; in exactly-once mode, committed): a retry record
        of one of these jobs delivered again from now on publishes nothing."""
        for job in batch.jobs:
            if job.remembered is not None and job.job is not None:
                self.outcomes.confirm(job.job.job_id, job.remembered, tenant=job.tenant)

    def discard(self, batch: ProcessedBatch) -> None:
        """Drop a processed batch without publishing it (its jobs will be delivered again)."""
        _end_spans(batch.jobs)

    def close(self) -> None:
        """Release the model and loader threads."""
        self._executor.shutdown(wait=True)
        self.runtimes.close()

    def _admit(self, record: KafkaRecord, picked_at: float, undeliverable: str | None = None) -> _InFlight:
        """Open the job's CONSUMER span, check its headers, decode and validate it; bad jobs get an error result.

        Never raises: whatever a record carries ends in exactly one outcome (a result, an error result with a
        dead letter, or a dead letter alone), and the records after it are served.
        """
        try:
            return self._admit_checked(record, picked_at, undeliverable)
        except Exception as exc:  # a bug of ours on a record nobody foresaw: the record is still answered
            log.exception("admitting %s[%s]@%s failed", record.topic, record.partition, record.offset)
            job = _InFlight(record, self._spans.start_consumer(f"process {record.topic}", (), {}), Origin.of(record))
            self._fail(job, InvalidJob(f"the record could not be admitted ({type(exc).__name__})"), picked_at)
            return job

    def _admit_checked(self, record: KafkaRecord, picked_at: float, undeliverable: str | None) -> _InFlight:
        attributes = tracing.consumer_attributes(record.topic, record.partition, record.offset, group=self._group)
        try:
            headers, refused = read_headers(record.headers, self._header_limits), None
        except AiaasError as exc:  # the trace context is unreadable too: this hop starts a trace of its own
            headers, refused = NO_HEADERS, exc
        span = self._spans.start_consumer(f"process {record.topic}", headers.trace_context(), attributes)
        job = _InFlight(record, span, Origin.of(record))
        if undeliverable is not None:
            job.bare, job.error = True, Undeliverable(f"the broker refused this job's outcome: {undeliverable}")
            span.set_status(Status(StatusCode.ERROR, str(job.error)))
            return job
        try:
            unreadable = getattr(record, "unreadable", None)  # set by the pipeline on a record it stepped over
            if unreadable is not None:
                raise UnparseableRecord(f"the Kafka client could not parse this record: {unreadable}")
            if refused is not None:
                raise refused
            if record.topic == self._topics.retry:
                state = self.retry.state_of(headers)
                job.attempt, job.origin = state.attempt, state.origin
                span.set_attribute(tracing.ATTEMPT, job.attempt)
            job.tenant = self._tenant_of_origin(job.origin.topic)
            job.job = decode_job(record.value or b"", self._max_bytes)
            span.set_attribute(tracing.JOB_ID, job.job.job_id)
            span.set_attribute("messaging.kafka.message.key", job.job.job_id)
            if self._replay(job):
                return job
            self._check_routing(job)
            job.result_topic = self.reply_topics.result_topic(job.job.reply_to, job.tenant)
            if job.job.deadline is not None and job.job.deadline < picked_at:
                job.result = self._outcome(job.job, "expired", picked_at)
                return job
            routed = self.runtimes.route(job.job.model_version)
            if isinstance(routed, str):
                job.pending_version = routed  # prepared after `_load_pinned`
                return job
            job.runtime = routed
            job.item = routed.prepare(job.job)
            job.prepared = True
        except AiaasError as exc:
            self._fail(job, exc, picked_at)
        except Exception as exc:  # a runtime's unexpected complaint is still the job's fault, not the worker's
            self._fail(job, InvalidJob(f"{type(exc).__name__}: {exc}"[:500]), picked_at)
        return job

    def _tenant_of_origin(self, topic: str) -> str | None:
        """The tenant of the infer topic a job came from; InvalidHeaders when a retry record names another topic."""
        try:
            return self._topics.tenant_of(topic)
        except ValueError as exc:
            raise InvalidHeaders(f"{exc}"[:500]) from None

    async def _check_result_topics(self, batch: list[_InFlight], picked_at: float) -> None:
        """Refuse jobs whose result topic does not exist (the broker creates none by itself), before they run.

        A missing reply_to ends the job with an error result on its default results topic; a missing default
        (a tenant's results topic nobody created) leaves only a dead letter.
        """
        if self._catalog is None:
            return
        # A replayed job's outcome (and topic) was decided when it first ran: it is sent as it was.
        checked = [job for job in batch if job.job is not None and not job.bare and not job.replayed]
        wanted = {topic for job in checked for topic in (job.result_topic, self.reply_topics.default(job.tenant))
                  if topic}
        missing = await self._catalog.missing(wanted) if wanted else set()
        if not missing:
            return
        for job in checked:
            default = self.reply_topics.default(job.tenant)
            if default in missing:  # no result can be sent: the dead letter alone says what happened
                job.prepared, job.result, job.retry = False, None, False
                job.error = Undeliverable(f"results topic {default} does not exist; an operator creates it "
                                          "(aiaas topics create, or aiaas acl apply)")
                job.span.set_status(Status(StatusCode.ERROR, str(job.error)))
            elif job.result_topic in missing:
                assert job.job is not None  # `checked` holds decoded jobs only
                job.result_topic, job.prepared, job.result = None, False, None
                self._fail(job, RefusedReplyTo(f"reply_to {job.job.reply_to!r} is refused: the topic does not "
                                               "exist (create it before publishing jobs that name it)"), picked_at)

    def _check_routing(self, flight: _InFlight) -> None:
        job = flight.job
        assert job is not None  # routed once decoded
        if job.tenant is not None and job.tenant != flight.tenant:
            raise InvalidJob(f"the job names tenant {job.tenant[:64]!r}, but a job's tenant is the one whose topic it "
                             f"was published to ({flight.tenant or 'none: the shared infer topic'}); leave it unset")
        if job.model != self.runtimes.model:
            raise InvalidJob(f"job is for model {job.model!r} but this topic is served by {self.runtimes.model!r}")
        if job.kind != "infer":
            raise InvalidJob(f"job kind {job.kind!r} does not belong on {self._topics.infer}")

    async def _load_pinned(self, batch: list[_InFlight], picked_at: float) -> None:
        """Load the versions that jobs pinned and this instance does not hold yet, then prepare those jobs."""
        for version in {job.pending_version for job in batch if job.pending_version is not None}:
            waiting = [job for job in batch if job.pending_version == version]
            try:
                runtime = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.runtimes.load_pinned, version)
            except Exception as exc:
                error = exc if isinstance(exc, AiaasError) else UnknownModelVersion(f"v{version}: {exc}")
                for job in waiting:
                    self._fail(job, error, picked_at)
                continue
            for job in waiting:
                job.runtime = runtime
                try:
                    assert job.job is not None  # a version is pinned by a decoded job only
                    job.item = runtime.prepare(job.job)
                    job.prepared = True
                except AiaasError as exc:
                    self._fail(job, exc, picked_at)
                except Exception as exc:
                    self._fail(job, InvalidJob(f"{type(exc).__name__}: {exc}"), picked_at)

    async def _infer(self, runnable: list[_InFlight], picked_at: float) -> None:
        """One model call for the jobs of one runtime, in a span linked from every job in it."""
        runtime = runnable[0].runtime
        assert runtime is not None  # runnable jobs are prepared, by their runtime
        attributes = {
            "messaging.batch.message_count": len(runnable),
            tracing.MODEL: runtime.model,
            tracing.MODEL_VERSION: runtime.version,
        }
        span = self._spans.start_linked(f"infer {runtime.model}", [job.span for job in runnable], attributes)
        on_loop = self.calls_on_event_loop(runtime)
        started = time.perf_counter()
        try:
            items = [job.item for job in runnable]
            if on_loop:
                outputs = runtime.infer(items)
                # Let the tasks that are ready run before the next batch: the previous batch's publishing, the fetch
                # loop, the producer's sender (a model loop with a backlog would otherwise not yield between batches).
                await asyncio.sleep(0)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, runtime.infer, items)
            if len(outputs) != len(runnable):
                raise ModelFailure(f"model returned {len(outputs)} outputs for {len(runnable)} jobs")
        except Exception as exc:  # any model failure becomes error results, never a dead worker
            failure = exc if isinstance(exc, AiaasError) else ModelFailure(f"{type(exc).__name__}: {exc}")
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(failure)))
            if len(runnable) == 1:
                log.exception("model call failed for job %s", runnable[0].job_id)
                self._fail(runnable[0], failure, picked_at)
                return
            log.warning("model call failed for a batch of %d (%s); running its jobs one by one",
                        len(runnable), failure)
            outputs = None
        finally:
            span.end()
        if outputs is None:  # one poisonous job must not cost its batch-mates their attempts: run each alone
            for job in runnable:
                await self._infer([job], picked_at)
            return
        inference_ms = (time.perf_counter() - started) * 1000
        for job, out in zip(runnable, outputs, strict=True):
            if isinstance(out, AiaasError):  # the runtime refused this item on a batch-wide check
                self._fail(job, out, picked_at)
                continue
            try:  # an output the contract cannot carry fails that job, not the worker
                assert job.job is not None  # prepared, so decoded
                job.result = self._outcome(job.job, "ok", picked_at, outputs=out, version=runtime.version,
                                           inference_ms=inference_ms, batch_size=len(runnable))
            except Exception as exc:
                self._fail(job, ModelFailure(f"the model's output for this job is invalid: {exc}"[:500]), picked_at)

    def calls_on_event_loop(self, runtime: ModelRuntime) -> bool:
        """Whether `runtime`'s batch calls run on the event loop rather than on a model thread (`model_calls`).

        `auto`: on the loop when one model instance computes on the CPU. Handing a short call to a thread costs
        more there than the thread wins: the call waits for the GIL while the loop holds it (up to CPython's switch
        interval, 5 ms) and the loop waits for the call's wake-up, and on a small machine the other cores are busy
        with the broker and the publishers anyway. On a GPU the thread lets the loop fetch and publish while the
        device computes; with several instances, their batches must run at once.
        """
        if self._model_calls == "auto":
            return self._instances == 1 and computes_on_cpu(runtime)
        return self._model_calls == "event-loop"

    def _replay(self, job: _InFlight) -> bool:
        """Answer a job id seen before with the outcome it had; True when it was."""
        assert job.job is not None  # asked once decoded
        outcome = self.outcomes.get(job.job.job_id, tenant=job.tenant)
        if outcome is None:
            return False
        job.payload, job.error, job.replayed = outcome.payload, outcome.error, True
        job.result_topic = outcome.topic
        job.span.set_attribute(tracing.REPLAYED, True)
        if job.record.topic == self._topics.retry and (outcome.delivered or outcome.source != record_key(job.record)):
            # Its job has its answer: this retry record came again (its offset was not committed when its partition
            # moved) beside the attempt that answered it. That answer is on its topic, or its record runs again and
            # sends it (a failed publish or transaction rewinds there): either way it must not be sent twice. Only
            # the record that computed an answer not yet delivered sends it (again). A client's repeat, on an infer
            # topic, always gets the answer again.
            self._supersede(job)
        return True

    def _supersede(self, job: _InFlight) -> None:
        job.superseded = True
        job.span.set_attribute(tracing.SUPERSEDED, True)

    def _fail(self, job: _InFlight, error: AiaasError, picked_at: float) -> None:
        job.error = error
        job.span.set_status(Status(StatusCode.ERROR, f"{error.type_name}: {error}"))
        if job.job is not None and self.retry.should_retry(error, job.attempt):
            job.retry, job.result = True, None  # another attempt via the retry topic; no outcome yet
            return
        job.retry = False
        job_id = job.job_id
        if job_id is not None:
            message = str(error) + (f" (gave up after {job.attempt} attempts)" if job.attempt > 1 else "")
            info = ErrorInfo(type=error.type_name, message=message, retriable=error.retriable)
            job.result = Result(
                job_id=job_id, model=self.runtime.model, status="error", error=info,
                attributes=job.job.attributes if job.job else {},
            )

    def _outcome(self, job: Job, status: str, picked_at: float, *, outputs: Outputs | None = None,
                 version: str | None = None, inference_ms: float = 0.0, batch_size: int = 0) -> Result:
        outputs = outputs or {}
        fields = dict(
            job_id=job.job_id,
            model=self.runtime.model,
            status=status,
            outputs=outputs,
            model_version=version,
            timings=trusted(Timings, {
                "queue_wait_ms": max(0.0, (picked_at - job.created_at) * 1000),
                "inference_ms": inference_ms,
                "batch_size": batch_size,
            }),
            error=None,
            progress=None,
            completed_at=time.time(),
            attributes=job.attributes,
        )  # in the order Result declares them, as pydantic would store them
        # Every field but the runtime's outputs is ours and valid; outputs of plain contract types need no pydantic
        # pass either (it would be paid for every job; bench/hotpath.py). Anything else is validated, and refused if
        # it does not fit.
        return trusted(Result, fields) if _fits_contract(outputs) else Result(**fields)

    def _seal(self, batch: list[_InFlight]) -> None:
        """Encode every outcome once, remember it under its job id, and give twins their first's outcome."""
        for job in batch:
            if job.twin is not None:
                first = job.twin
                job.payload, job.error, job.retry, job.result = first.payload, first.error, first.retry, first.result
                job.replayed = True
                if job.record.topic == self._topics.retry:  # two attempts of one job: the first one's outcome stands
                    self._supersede(job)
                continue
            if job.result is None or job.replayed:
                continue
            payload = encode(job.result)
            if len(payload) > self._max_bytes:  # the broker would refuse it: say so instead, and dead-letter the job
                self._fail(job, PayloadTooLarge(f"the result has {len(payload)} bytes; results may have at most "
                                                f"{self._max_bytes} (AIAAS_KAFKA_MAX_MESSAGE_BYTES)"), time.time())
                payload = encode(job.result)
            job.payload = payload
            job.span.set_attribute(tracing.STATUS, job.result.status)
            if job.job is not None:
                job.remembered = Outcome(self._result_topic(job), payload, job.error, source=record_key(job.record))
                self.outcomes.put(job.job.job_id, job.remembered, tenant=job.tenant)

    def _result_topic(self, job: _InFlight) -> str:
        """Its checked reply topic; the default one for a job whose reply_to was refused or not yet checked."""
        return job.result_topic or self.reply_topics.default(job.tenant)

    def _outgoing(self, job: _InFlight) -> list[_Outgoing]:
        """The records that carry a job's outcome, each with its PRODUCER span (started here) under the job's span.

        A result (and a dead letter if the job failed); a dead letter alone when the outcome cannot be published;
        the original job for the retry topic, with the next attempt's headers, when it failed retriably.
        """
        if job.bare:
            return [self._dead_letter(job, bare=True)]
        if job.superseded:
            return []
        if job.retry:
            topic = self._topics.retry
            attributes = tracing.producer_attributes(topic, job_id=job.job_id) | {tracing.ATTEMPT: job.attempt + 1}
            assert job.error is not None  # `_fail` sets both
            headers = self.retry.retry_headers(job.origin, job.error, job.attempt)
            return [self._record(job, topic, job.record.value or b"", job.record.key, headers, attributes)]
        out = []
        if job.payload is not None and job.job_id is not None:
            topic = self._result_topic(job)
            out.append(self._record(job, topic, job.payload, job.job_id.encode(), [],
                                    tracing.producer_attributes(topic, job_id=job.job_id)))
        if job.error is not None:
            out.append(self._dead_letter(job))
        return out

    def _dead_letter(self, job: _InFlight, bare: bool = False) -> _Outgoing:
        """The original bytes with origin and error headers; `bare`: headers only (the broker refused more)."""
        assert job.error is not None  # a dead letter says why the job failed
        headers = dlq_headers(job.record, job.error, job.job_id, job.attempt, origin=job.origin)
        value, key = job.record.value or b"", job.record.key
        if bare or len(value) > self._max_bytes:  # too big to publish again: keep the headers, drop the body
            headers.append(("aiaas.dlq.value.dropped_bytes", str(len(value)).encode()))
            value = b""
        if key is not None and (bare or len(key) > _MAX_ECHOED_KEY):
            headers.append(("aiaas.dlq.key.dropped_bytes", str(len(key)).encode()))
            key = None
        return self._record(job, self._dlq, value, key, headers,
                            tracing.producer_attributes(self._dlq, job_id=job.job_id))

    def _record(self, job: _InFlight, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
                attributes: dict[str, AttributeValue]) -> _Outgoing:
        span = self._spans.start_child(f"send {topic}", SpanKind.PRODUCER, job.span, attributes)
        return _Outgoing(job, topic, value, key, headers + self._spans.headers(span), span)

    async def _send_all(self, outgoing: list[_Outgoing]) -> list[BaseException | None]:
        """Send every record; per record, None once the broker acknowledged it, or what went wrong."""
        send_many = getattr(self._sink, "send_many", None)
        if send_many is not None:
            errors: list[BaseException | None] = await send_many(outgoing)
            return errors
        sent = await asyncio.gather(*(self._sink.send(r.topic, r.value, key=r.key, headers=r.headers)
                                      for r in outgoing), return_exceptions=True)
        return [exc if isinstance(exc, BaseException) else None for exc in sent]


@dataclass(slots=True)
class _Outgoing:
    """One record to publish for a job: a result, a dead letter or a retry, with its open PRODUCER span."""

    job: _InFlight
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


def _highest_first(job: _InFlight) -> int:
    """Sort key of runnable jobs: the highest priority first."""
    assert job.job is not None  # runnable jobs are decoded
    return -job.job.priority


def _fits_contract(outputs: Mapping[Any, object]) -> bool:
    """True when every output already is a value `InputValue` allows as it is: a Tensor, str, bool, int, float
    or list of str (exact types, checked without pydantic: this runs for every job)."""
    for key, value in outputs.items():
        if type(key) is not str or not (type(value) is Tensor or is_plain_value(value)):
            return False
    return True


def _pair_twins(batch: list[_InFlight]) -> None:
    """A job id that occurs twice in one batch runs once: later records share the first one's outcome."""
    first: dict[str, _InFlight] = {}
    for job in batch:
        if job.job is None or job.replayed:
            continue
        earlier = first.setdefault(job.job.job_id, job)
        if earlier is not job:
            job.twin, job.prepared, job.pending_version, job.result = earlier, False, None, None
