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
import functools
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opentelemetry.trace import Status, StatusCode

from aiaas import tracing
from aiaas.contract.codec import decode_job, encode
from aiaas.contract.dead_letters import Origin
from aiaas.contract.envelopes import (
    ErrorInfo,
    Job,
    Result,
    Tensor,
    Timings,
    is_plain_value,
    trusted,
)
from aiaas.contract.headers import NO_HEADERS, HeaderLimits, read_headers
from aiaas.contract.priority import PRIORITY_HEADER, check_priority
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
from aiaas.metrics.serving import ServingMetrics
from aiaas.serving.batch import JobInFlight, KafkaRecord, ProcessedBatch, ResultSink, end_spans, record_key
from aiaas.serving.chunks import ChunkStreamer
from aiaas.serving.idempotency import Outcome, OutcomeCache
from aiaas.serving.job_metrics import count_delivered
from aiaas.serving.outcomes import OutcomeSender
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.runtime import ModelRuntime, Outputs, computes_on_cpu, streams
from aiaas.serving.runtimes import RuntimeSet
from aiaas.settings import ModelCalls
from aiaas.tracing.job_spans import JobSpans

__all__ = ["BatchWorker", "ProcessedBatch", "ResultSink", "KafkaRecord", "record_key"]


log = logging.getLogger("aiaas.worker")


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
        chunk_sink: ResultSink | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.runtimes = runtime if isinstance(runtime, RuntimeSet) else RuntimeSet(runtime)
        self.retry = retry or RetryPolicy(max_attempts=1)
        self.outcomes = outcomes if outcomes is not None else OutcomeCache(0)
        self._sink = sink
        self._topics = topics
        self._group = group
        self._max_bytes = max_message_bytes
        self._spans = JobSpans()
        # Model calls on threads (unless `model_calls` puts them on the event loop), so fetching and publishing go
        # on meanwhile; one thread per model instance.
        self._executor = ThreadPoolExecutor(max_workers=model_instances,
                                            thread_name_prefix=f"{self.runtimes.model}-model")
        self._model_calls = model_calls
        self._instances = model_instances
        self._header_limits = header_limits
        self.reply_topics = reply_topics or ReplyTopics(topics, topics.infer.rsplit(".", 2)[0])
        self._catalog = topic_catalog
        self._sender = OutcomeSender(sink, self._spans, retry=self.retry, retry_topic=topics.retry,
                                     dlq_topic=dlq_topic, max_message_bytes=max_message_bytes,
                                     result_topic=self._result_topic)
        self._generating: dict[tuple[str | None, str], JobInFlight] = {}
        """Jobs in a streaming runtime now, by (tenant, job id): what a cancellation may end."""
        self._chunks = ChunkStreamer(chunk_sink or sink, self._spans, self.runtimes.model, self._result_topic)
        self.metrics = metrics

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
            groups: dict[int, list[JobInFlight]] = {}
            for job in runnable:
                groups.setdefault(id(job.runtime), []).append(job)
            for group in groups.values():
                await self._infer(group, picked_at)
            self._seal(batch)
        except BaseException:
            end_spans(batch)
            raise
        return ProcessedBatch(batch)

    async def publish(self, batch: ProcessedBatch) -> None:
        """Stage 2: send every result and dead letter; returns once the broker acknowledged them all.

        Raises PublishFailed, naming the records whose outcomes were not acknowledged.
        """
        try:
            failed = await self._sender.send(batch.jobs)
        finally:
            end_spans(batch.jobs)
        if failed:
            raise PublishFailed(failed)

    async def dead_letter_undeliverable(self, refused: Sequence[tuple[KafkaRecord, str]]) -> None:
        """A bare dead letter (headers only) for each record whose outcome the broker refused for good, with the
        reason; returns once the broker acknowledged them all (raises PublishFailed otherwise)."""
        picked_at = time.time()
        await self.publish(ProcessedBatch([self._admit(record, picked_at, reason) for record, reason in refused]))

    def delivered(self, batch: ProcessedBatch, refused: Collection[tuple[str, int, int]] = ()) -> None:
        """The batch's outcomes are on their topics (acknowledged; in exactly-once mode, committed), except those of
        the records in `refused` (by `record_key`): a retry record of one of these jobs delivered again from now on
        publishes nothing. Only outcomes a retry record computed need it (`Outcome.source`)."""
        for job in batch.jobs:
            if job.remembered is not None and job.job is not None and record_key(job.record) not in refused:
                self.outcomes.confirm(job.job.job_id, job.remembered, tenant=job.tenant)
        if self.metrics is not None:
            try:
                count_delivered(self.metrics, batch.jobs, refused)
            except Exception:  # noqa: BLE001 - a metric (or a runtime's output_categories) never holds a batch back
                log.exception("counting a delivered batch into the metrics failed")

    def discard(self, batch: ProcessedBatch) -> None:
        """Drop a processed batch without publishing it (its jobs will be delivered again)."""
        end_spans(batch.jobs)

    def close(self) -> None:
        """Release the model and loader threads."""
        self._executor.shutdown(wait=True)
        self.runtimes.close()

    def _admit(self, record: KafkaRecord, picked_at: float, undeliverable: str | None = None) -> JobInFlight:
        """Open the job's CONSUMER span, check its headers, decode and validate it; bad jobs get an error result.

        Never raises: whatever a record carries ends in exactly one outcome (a result, an error result with a
        dead letter, or a dead letter alone), and the records after it are served.
        """
        try:
            return self._admit_checked(record, picked_at, undeliverable)
        except Exception as exc:  # a bug of ours on a record nobody foresaw: the record is still answered
            log.exception("admitting %s[%s]@%s failed", record.topic, record.partition, record.offset)
            job = JobInFlight(record, self._spans.start_consumer(f"process {record.topic}", (), {}), Origin.of(record))
            self._fail(job, InvalidJob(f"the record could not be admitted ({type(exc).__name__})"), picked_at)
            return job

    def _admit_checked(self, record: KafkaRecord, picked_at: float, undeliverable: str | None) -> JobInFlight:
        attributes = tracing.consumer_attributes(record.topic, record.partition, record.offset, group=self._group)
        try:
            headers, refused = read_headers(record.headers, self._header_limits), None
        except AiaasError as exc:  # the trace context is unreadable too: this hop starts a trace of its own
            headers, refused = NO_HEADERS, exc
        # The span starts when the pipeline took the record from the broker (a retry record's: now, after its backoff).
        span = self._spans.start_consumer(f"process {record.topic}", headers.trace_context(), attributes,
                                          getattr(record, "taken_ns", None))
        job = JobInFlight(record, span, Origin.of(record))
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
            if (priority := headers.get(PRIORITY_HEADER)) is not None:
                check_priority(priority)  # the queue read it as 0 when it is not a priority: say so to the publisher
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

    async def _check_result_topics(self, batch: list[JobInFlight], picked_at: float) -> None:
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

    def _check_routing(self, flight: JobInFlight) -> None:
        job = flight.job
        assert job is not None  # routed once decoded
        if job.tenant is not None and job.tenant != flight.tenant:
            raise InvalidJob(f"the job names tenant {job.tenant[:64]!r}, but a job's tenant is the one whose topic it "
                             f"was published to ({flight.tenant or 'none: the shared infer topic'}); leave it unset")
        if job.model != self.runtimes.model:
            raise InvalidJob(f"job is for model {job.model!r} but this topic is served by {self.runtimes.model!r}")
        if job.kind != "infer":
            raise InvalidJob(f"job kind {job.kind!r} does not belong on {self._topics.infer}")

    async def _load_pinned(self, batch: list[JobInFlight], picked_at: float) -> None:
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

    async def _infer(self, runnable: list[JobInFlight], picked_at: float) -> None:
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
            if streams(runtime):
                outputs = await self._infer_streaming(runtime, runnable, items)
            elif on_loop:
                outputs = runtime.infer(items)  # (the pipeline lets the other tasks run between batches)
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
        if self.metrics is not None:
            self.metrics.model_seconds.labels(runtime.model).observe(inference_ms / 1000)
            self.metrics.batch_size.labels(runtime.model).observe(len(runnable))
        describe = getattr(runtime, "span_details", None)
        for job, out in zip(runnable, outputs, strict=True):
            if isinstance(out, AiaasError):  # the runtime refused this item on a batch-wide check
                self._fail(job, out, picked_at)
                continue
            if describe is not None:
                _describe_on_span(job, describe(job.item, out))
            try:  # an output the contract cannot carry fails that job, not the worker
                assert job.job is not None  # prepared, so decoded
                job.result = self._outcome(job.job, "ok", picked_at, outputs=out, version=runtime.version,
                                           inference_ms=inference_ms, batch_size=len(runnable))
            except Exception as exc:
                self._fail(job, ModelFailure(f"the model's output for this job is invalid: {exc}"[:500]), picked_at)

    async def _infer_streaming(self, runtime: ModelRuntime, runnable: list[JobInFlight],
                               items: list[Any]) -> Sequence[Outputs | AiaasError]:
        """A streaming runtime's call: its progress becomes chunks on each job's results topic, all of them
        acknowledged before the call's outputs are returned (so each final result comes after its chunks)."""
        loop = asyncio.get_running_loop()
        streams = [self._chunks.open(job) for job in runnable]
        for job in runnable:
            if job.job_id is not None:
                self._generating[(job.tenant, job.job_id)] = job

        def progress(index: int, text: str, tokens: int) -> None:  # on the runtime's thread
            loop.call_soon_threadsafe(self._chunks.add, streams[index], text, tokens, runtime.version)

        try:
            outputs: Sequence[Outputs | AiaasError] = await loop.run_in_executor(
                self._executor, functools.partial(runtime.infer, items, progress))  # type: ignore[call-arg]
        except asyncio.CancelledError:  # abandoned (a drain timed out, the partitions moved): stop generating them
            for job in runnable:
                self._cancel_run(job)
            for stream in streams:
                stream.closed = True
            raise
        finally:
            for job in runnable:
                if job.job_id is not None and self._generating.get((job.tenant, job.job_id)) is job:
                    del self._generating[(job.tenant, job.job_id)]
        await self._chunks.flush(streams)
        return outputs

    def cancel(self, job_id: str, tenant: str | None) -> bool:
        """End the generation of `tenant`'s job `job_id` (None: from the shared topics) now, when it runs here: its
        result says `cancelled`. False otherwise. A tenant never cancels another's job, even one with the same id."""
        job = self._generating.get((tenant, job_id))
        return job is not None and self._cancel_run(job)

    @staticmethod
    def _cancel_run(job: JobInFlight) -> bool:
        cancel = getattr(job.runtime, "cancel", None)
        if cancel is None:
            return False
        cancel(job.item)
        return True

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

    def _replay(self, job: JobInFlight) -> bool:
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
        elif outcome.source is not None:
            job.remembered = outcome  # this record's own answer, sent again: its delivery confirms it
        return True

    def _supersede(self, job: JobInFlight) -> None:
        job.superseded = True
        job.span.set_attribute(tracing.SUPERSEDED, True)

    def _fail(self, job: JobInFlight, error: AiaasError, picked_at: float) -> None:
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
            chunk=None,
            completed_at=time.time(),
            attributes=job.attributes,
        )  # in the order Result declares them, as pydantic would store them
        # Every field but the runtime's outputs is ours and valid; outputs of plain contract types need no pydantic
        # pass either (it would be paid for every job; bench/hotpath.py). Anything else is validated, and refused if
        # it does not fit.
        return trusted(Result, fields) if _fits_contract(outputs) else Result(**fields)

    def _seal(self, batch: list[JobInFlight]) -> None:
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
                # A retry record's answer is owed by that record until it is delivered (`_replay`); an infer record's
                # needs no tracking (no retry record is its source), and costs nothing more per job.
                source = record_key(job.record) if job.record.topic == self._topics.retry else None
                job.remembered = Outcome(self._result_topic(job), payload, job.error, source=source)
                self.outcomes.put(job.job.job_id, job.remembered, tenant=job.tenant)

    def _result_topic(self, job: JobInFlight) -> str:
        """Its checked reply topic; the default one for a job whose reply_to was refused or not yet checked."""
        return job.result_topic or self.reply_topics.default(job.tenant)

def _highest_first(job: JobInFlight) -> int:
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


def _pair_twins(batch: list[JobInFlight]) -> None:
    """A job id that occurs twice in one batch runs once: later records share the first one's outcome."""
    first: dict[str, JobInFlight] = {}
    for job in batch:
        if job.job is None or job.replayed:
            continue
        earlier = first.setdefault(job.job.job_id, job)
        if earlier is not job:
            job.twin, job.prepared, job.pending_version, job.result = earlier, False, None, None


def _describe_on_span(job: JobInFlight, details: tuple[Mapping[str, Any], Sequence[tuple[str, float]]]) -> None:
    """A runtime's own span attributes and timed events (`span_details`: GenAI's for the LLM) on the job's span."""
    attributes, events = details
    job.span.set_attributes(dict(attributes))
    for name, at in events:
        job.span.add_event(name, timestamp=int(at * 1e9))
