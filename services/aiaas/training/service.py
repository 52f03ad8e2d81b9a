"""A model type's trainer process: one training job at a time from `<prefix>.<model>.train` and every
tenant's `<prefix>.<model>.train.<tenant>` (a pattern subscription: a new tenant's topic is consumed within
seconds of its creation).

For each job: `accepted` → train on a thread of its own while `running` events stream out →
register the new version (the promotion policy picks `production` or `staging`) → announce
it on `<prefix>.models` → `succeeded`. The offset is committed only after the final event is
acknowledged, so a trainer that dies mid-job runs it again after restart (at-least-once), up to
`max_attempts` starts. While a job trains, the partitions are paused and the consumer keeps
polling, so a long run never costs the trainer its group membership (`max.poll.interval.ms`).

A job's tenant is the one whose train topic it arrived on (Kafka ACLs say who may write there), never the
job's `tenant` field: a job naming another tenant is refused (`InvalidJob`). Its events go to that tenant's
results topic `<prefix>.<model>.results.<tenant>` (or a `reply_to` the operator allows under it), and the
versions it registers and its attempt count are its tenant's: a job id another tenant used never stands for
theirs.

A training job is untrusted input, so no job can stop the trainer:

* its headers are checked before anything reads them (`headers.read_headers`): a null, non-text or junk
  trace-context or `aiaas.*` header, or too many headers, ends the job `failed` (`InvalidHeaders`) with a
  dead letter; the trace context comes from the checked headers only;
* a record the Kafka client itself cannot parse (aiokafka raises from `getmany`) is found and stepped
  over (`unparseable.UnparseableSearch`) and dead-lettered by its coordinates (`UnparseableRecord`);
* anything that goes wrong with a job — a bad record, a refused `reply_to`, data it may not read,
  a run past `max_train_s` (`TimeLimitExceeded`), any exception from the training thread (OSError,
  MemoryError, ...) — ends it `failed` with a dead letter, and the next job is served;
* a broker error that may pass (a timeout, a lost connection) leaves the job uncommitted: it is read
  again after a pause and runs again, its attempts bounded by `max_attempts`;
* SIGTERM stops a running training at its next step. That job is not committed and its start is
  not counted: it runs again, from the start, when a trainer next takes the partition (what a
  rolling restart should do). A job past training (registering, announcing) finishes first.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from aiaas import tracing
from aiaas.contract.codec import decode_job, encode
from aiaas.contract.dead_letters import dlq_headers
from aiaas.contract.envelopes import ErrorInfo, Job, Result, TrainingProgress
from aiaas.contract.headers import NO_HEADERS, HeaderLimits, RecordHeaders, read_headers
from aiaas.contract.reply_topics import ReplyTopics, TopicCatalog
from aiaas.contract.topics import ModelTopics, dlq_topic, models_topic, service_topics
from aiaas.errors import (
    AiaasError,
    InvalidHeaders,
    InvalidJob,
    RefusedReplyTo,
    ServiceMisconfigured,
    TooManyAttempts,
    TrainingFailed,
    TrainingInterrupted,
    Undeliverable,
    UnparseableRecord,
)
from aiaas.kafka.admin import ensure_topics
from aiaas.kafka.sink import refused_for_good
from aiaas.kafka.topic_catalog import KafkaTopicCatalog
from aiaas.kafka.unparseable import UnparseableSearch, is_unparseable
from aiaas.metrics.endpoint import close_endpoint, open_endpoint
from aiaas.metrics.probes import Health, watch_broker
from aiaas.metrics.training import TrainingMetrics
from aiaas.registry.announce import ModelEvent
from aiaas.registry.store import ModelVersion, Registry
from aiaas.settings import HomeSettings, KafkaSettings
from aiaas.tracing.setup import setup_tracing
from aiaas.training.attempts import AttemptCounter
from aiaas.training.promotion import default_policy
from aiaas.training.protocol import SCORED_ON, Candidate, ModelTrainer
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings
from aiaas.training.stopping import StopSignal
from aiaas.training.supervise import TrainingRun

__all__ = ["TrainerService", "run_trainer"]

log = logging.getLogger("aiaas.trainer")

_REDELIVERY_PAUSE_S = 2.0
"""How long the trainer waits before reading a job again whose outcome the broker did not take (it may be down)."""

_TOPIC_DISCOVERY_MS = 10_000
"""How often the consumer refreshes its metadata, so a tenant's train topic created now is consumed this soon."""

_SEARCH_STEPS = 16
"""The most records one search for a record the Kafka client cannot parse reads of each partition."""

_TENANT_PARAM = "tenant"
"""The key of a registered version's `params` naming the tenant whose training job made it (absent: none)."""


class _Redeliver(Exception):
    """The job's outcome could not be published for now: leave it uncommitted and read it again."""


class TrainerService:
    """Consumes one model type's training jobs and turns each into a registered, announced version."""

    def __init__(self, trainer: ModelTrainer, kafka: KafkaSettings, settings: TrainerSettings, registry: Registry,
                 attempts: AttemptCounter, header_limits: HeaderLimits | None = None) -> None:
        self.trainer, self.kafka, self.settings, self.registry = trainer, kafka, settings, registry
        self.metrics = TrainingMetrics(trainer.model)
        self.health = Health("starting: joining the trainers' consumer group")
        self.attempts = attempts
        self.header_limits = header_limits or HeaderLimits.configured()
        self.topics = ModelTopics.of(trainer.model, kafka.topic_prefix)
        self.group = settings.group_id or f"{kafka.topic_prefix}.{trainer.model}.trainer"
        self.policy = default_policy(trainer.model).model_copy(
            update={"mode": settings.promote, "min_delta": settings.min_delta})
        self._replies = ReplyTopics(self.topics, kafka.topic_prefix)
        self._tracer = trace.get_tracer(tracing.TRACER_NAME)
        self._stopping = asyncio.Event()
        self._run: TrainingRun | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._catalog: TopicCatalog | None = None
        self._unparseable: UnparseableSearch | None = None

    def stop(self) -> None:
        """Leave the group: a job in training stops at its next step and stays uncommitted (it runs again);
        a job past training finishes (final event, commit) first."""
        self._stopping.set()
        if self._run is not None:
            self._run.stop()

    async def run(self) -> None:
        """Serve training jobs until `stop()`."""
        await ensure_topics(self.kafka, service_topics(self.trainer.model, self.kafka))
        producer = AIOKafkaProducer(**self.kafka.connection_kwargs(), acks="all", enable_idempotence=True,
                                    client_id=f"aiaas-{self.trainer.model}-trainer")
        consumer = AIOKafkaConsumer(
            **self.kafka.connection_kwargs(), group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=f"aiaas-{self.trainer.model}-trainer",
            max_partition_fetch_bytes=self.kafka.max_batch_bytes,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            # The subscription is a pattern (every tenant's train topic): a new tenant's topic is found this soon.
            metadata_max_age_ms=_TOPIC_DISCOVERY_MS,
        )
        consumer.subscribe(pattern=self.subscription())
        await producer.start()
        watching = asyncio.create_task(watch_broker(self.health, producer.client.force_metadata_update),
                                       name="aiaas-broker-watch")
        try:
            await consumer.start()
            self.health.waiting_for(None)
            try:
                log.info("%s trainer ready: consuming %s and %s.<tenant> as group %s (policy %s on %s; data roots %s)",
                         self.trainer.model, self.topics.train, self.topics.train, self.group, self.policy.mode,
                         self.policy.metric, ", ".join(map(str, self.settings.data_roots)) or "none")
                await self.serve(consumer, producer, KafkaTopicCatalog(producer))
            finally:
                self.health.stopping()
                await consumer.stop()
        finally:
            watching.cancel()
            await producer.stop()

    async def serve(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, catalog: TopicCatalog) -> None:
        """Serve training jobs from a started `consumer` (subscribed to `subscription()`) until `stop()`, sending
        events, announcements and dead letters with `producer`; `catalog` says which result topics exist."""
        self._consumer, self._producer, self._catalog = consumer, producer, catalog
        self._unparseable = UnparseableSearch(consumer, max_steps=_SEARCH_STEPS, logger=log)
        while not self._stopping.is_set():
            for records in (await self._fetch()).values():
                for record in records:  # more than one only after stepping over an unparseable record
                    if self._stopping.is_set() or not await self._handle(record):
                        break  # the rest of this partition is read again (or by its new owner)

    def subscription(self) -> str:
        """The train topic and every tenant's train topic, as one pattern (anchored)."""
        return f"^(?:{self.topics.train_pattern()})$"

    async def _fetch(self) -> dict[TopicPartition, list]:
        """The next training job, if any; never raises: a record the Kafka client cannot parse is stepped over
        (it comes back as an `UnreadableRecord`, after the records read while finding it), a broker error waits."""
        assert self._consumer is not None and self._unparseable is not None, "serve() first"
        try:
            return await self._consumer.getmany(timeout_ms=500, max_records=1)
        except Exception as exc:  # noqa: BLE001 - sorted below; the trainer never exits on what it reads
            error: BaseException = exc
        if is_unparseable(error):
            try:
                return await self._unparseable.step_over(error, {})  # the trainer's positions are its commits
            except Exception as exc:  # noqa: BLE001 - the broker went away during the search: it starts again
                error = exc
        log.error("%s: fetching training jobs failed (%s: %s); trying again", self.trainer.model,
                  type(error).__name__, error)
        await asyncio.sleep(_REDELIVERY_PAUSE_S)
        return {}

    async def _handle(self, record: ConsumerRecord) -> bool:
        """One training job, from its record to its committed offset; never raises for what the job holds.

        True when the records after it on its partition may follow; False when they are read again (this one
        was not finished, the trainer is stopping, or the partition moved to another trainer).
        """
        assert self._consumer is not None, "serve() first"
        partition = TopicPartition(record.topic, record.partition)
        if partition not in self._consumer.assignment():
            return False  # a rebalance while an earlier record ran: its new owner reads it
        try:
            attempts_key = await self._outcome(record)
        except TrainingInterrupted:
            log.info("%s: training of %s stopped; not committed, it runs again", self.trainer.model, partition)
            return False
        except _Redeliver as exc:
            log.warning("%s: %s; reading offset %d of %s again in %gs", self.trainer.model, exc, record.offset,
                        partition, _REDELIVERY_PAUSE_S)
            if partition in self._consumer.assignment():
                self._consumer.seek(partition, record.offset)
            await asyncio.sleep(_REDELIVERY_PAUSE_S)
            return False
        if partition not in self._consumer.assignment():
            log.warning("%s moved to another trainer during the job; it will run the job again", partition)
            return False
        try:
            await self._consumer.commit({partition: record.offset + 1})
        except KafkaError as exc:  # the group rebalanced: the new owner runs the job again (at-least-once)
            log.warning("commit after job failed (%s); the job may run again", exc)
            return True
        await self._move_past(partition, record.offset + 1)
        if attempts_key is not None:
            try:
                self.attempts.forget(attempts_key)
            except OSError as exc:  # a stale count only matters if the same job id comes again
                log.warning("attempt count of %r not removed (%s)", attempts_key[:128], exc)
        return True

    async def _move_past(self, partition: TopicPartition, offset: int) -> None:
        """A rebalance during the job (a new tenant's topic makes one) puts the partition back at its committed
        offset, this job's: move on past it, or the job would run again."""
        assert self._consumer is not None, "serve() first"
        try:
            if await self._consumer.position(partition) < offset:
                self._consumer.seek(partition, offset)
        except KafkaError as exc:  # the partition moved meanwhile: its new owner starts at the commit
            log.debug("position of %s not checked (%s)", partition, exc)

    def _tenant_of(self, topic: str) -> str | None:
        """The tenant whose train topic `topic` is (None for the shared one); raises InvalidJob for another topic."""
        try:
            return self.topics.tenant_of(topic)
        except ValueError as exc:
            raise InvalidJob(f"{exc}"[:500]) from None

    def _checked_headers(self, record: ConsumerRecord) -> tuple[RecordHeaders, AiaasError | None]:
        """The record's checked headers, and the error that refuses them (None when they pass)."""
        try:
            return read_headers(record.headers, self.header_limits), None
        except AiaasError as exc:
            return NO_HEADERS, exc
        except Exception as exc:  # noqa: BLE001 - a bug of ours on headers nobody foresaw: refuse them, go on
            return NO_HEADERS, InvalidHeaders(f"the headers could not be read ({type(exc).__name__})")

    async def _outcome(self, record: ConsumerRecord) -> str | None:
        """Run the record's job and publish its final outcome (succeeded, or failed + dead letter); the job's
        attempts key, if it has a job.

        Raises TrainingInterrupted (stopping) or _Redeliver (the broker did not take the outcome, for now).
        """
        headers, refused = self._checked_headers(record)
        try:  # refused headers: this hop starts a trace of its own
            context = tracing.extract_context(headers.trace_context())
        except Exception:  # noqa: BLE001 - a header no propagator can read must not stop the trainer
            context = None
        with self._tracer.start_as_current_span(
            f"process {record.topic}", context=context, kind=SpanKind.CONSUMER,
            attributes=tracing.consumer_attributes(record.topic, record.partition, record.offset, group=self.group),
        ) as span:
            job, tenant = None, None
            try:
                unreadable = getattr(record, "unreadable", None)  # an UnreadableRecord the search stepped over
                if unreadable is not None:
                    raise UnparseableRecord(f"the Kafka client could not parse this record: {unreadable}")
                tenant = self._tenant_of(record.topic)
                if refused is not None:
                    raise refused
                job = decode_job(record.value or b"", self.kafka.max_message_bytes)
                span.set_attribute(tracing.JOB_ID, job.job_id)
                await self._train(job, tenant, record, span)
                return _attempts_key(job.job_id, tenant)
            except (TrainingInterrupted, _Redeliver):
                raise
            except KafkaError as exc:
                if not refused_for_good(exc):
                    raise _Redeliver(f"the broker did not take an event of job {job.job_id if job else '?'} "
                                     f"({type(exc).__name__})") from exc
                error: AiaasError = TrainingFailed(
                    f"the broker refused an event of this job: {type(exc).__name__}: {exc}")
            except AiaasError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - OSError, MemoryError, a bug: the job fails, the trainer goes on
                span.record_exception(exc)
                error = TrainingFailed(f"{type(exc).__name__}: {exc}"[:1000])
            await self._fail(record, job, tenant, error, span)
            return _attempts_key(job.job_id, tenant) if job is not None else None

    async def _train(self, job: Job, tenant: str | None, record: ConsumerRecord, span: Span) -> None:
        if job.kind != "train" or job.model != self.trainer.model:
            raise InvalidJob(f"{record.topic} takes `train` jobs for {self.trainer.model!r}; "
                             f"got a {job.kind!r} job for {job.model!r}")
        if job.tenant is not None and job.tenant != tenant:
            raise InvalidJob(f"the job names tenant {job.tenant[:64]!r}, but a training job's tenant is the one whose "
                             f"topic it was published to ({tenant or 'none: the shared train topic'}); leave it unset")
        await self._check_result_topics(job, tenant)
        key = _attempts_key(job.job_id, tenant)
        attempt = self.attempts.start(key)
        span.set_attribute("aiaas.training.attempt", attempt)
        if attempt > self.settings.max_attempts:
            raise TooManyAttempts(f"started {attempt - 1} times without finishing (the trainer kept stopping); "
                                  f"giving up after max_attempts={self.settings.max_attempts}")
        await self._emit(job, tenant, "accepted", outputs={"attempt": attempt})
        done = [v for v in self.registry.versions(self.trainer.model)
                if v.job_id == job.job_id and v.params.get(_TENANT_PARAM) == tenant]
        if done:  # a rerun after a crash between registering and committing: do not register twice
            version = done[-1]
            log.info("%s: job %s already produced v%d; not training again", self.trainer.model, job.job_id,
                     version.version)
        else:
            with tempfile.TemporaryDirectory(prefix="aiaas-train-") as workdir:
                try:
                    candidate = await self._run_training(job, tenant, Path(workdir))
                except TrainingInterrupted:
                    self._withdraw(key)
                    raise
                version = self._register(job, tenant, candidate)
        await self._announce(version)
        await self._emit(job, tenant, "succeeded", outputs=self._succeeded_outputs(version))
        log.info("%s: job %s → v%d %s", self.trainer.model, job.job_id, version.version, version.metrics)

    async def _check_result_topics(self, job: Job, tenant: str | None) -> None:
        """Refuse, before it runs, a job whose events could not be sent: its `reply_to` not allowed or missing
        (RefusedReplyTo: its `failed` event goes to its tenant's results topic), or that results topic missing
        (Undeliverable: only the dead letter says what happened; the broker creates no topic by itself)."""
        default = self._replies.default(tenant)
        topic = self._replies.result_topic(job.reply_to, tenant)
        wanted = {topic, default} - {self.topics.results}  # the model's own results topic is always there
        assert self._catalog is not None, "serve() first"
        missing = await self._catalog.missing(wanted) if wanted else set()
        if default in missing:
            raise Undeliverable(f"results topic {default} does not exist; an operator creates it "
                                "(aiaas topics create, or aiaas acl apply)")
        if topic in missing:
            raise RefusedReplyTo(f"reply_to {topic[:100]!r} is refused: the topic does not exist")

    def _withdraw(self, job_id: str) -> None:
        """Stopped from outside (SIGTERM): this start does not count against the job's max_attempts."""
        try:
            self.attempts.withdraw(job_id)
        except OSError as exc:
            log.warning("attempt count of %r not lowered (%s)", job_id[:128], exc)

    def _succeeded_outputs(self, version: ModelVersion) -> dict[str, object]:
        aliases = sorted(self._aliases_of(version))
        outputs: dict[str, object] = {
            "version": version.version, "aliases": aliases,
            **{f"metric.{name}": float(value) for name, value in version.metrics.items()},
        }
        scored_on = version.params.get(SCORED_ON)
        if isinstance(scored_on, str):
            outputs[SCORED_ON] = scored_on
        if scored_on == "job_data":
            outputs["promotion"] = ("staging only: scored on the job's own data, so never made production "
                                    "automatically (`aiaas models promote` can)")
        return outputs

    async def _run_training(self, job: Job, tenant: str | None, workdir: Path) -> Candidate:
        """Check the job's data and train, on a thread of its own, within the time limit; stream its progress;
        keep the (paused) consumer polling meanwhile."""
        model = self.trainer.model

        def work(stop: StopSignal, report) -> Candidate:
            request = TrainingRequest.from_job(job, self.settings, getattr(self.trainer, "hyper_parameters", None))
            span.set_attributes({f"aiaas.training.{k}": v for k, v in request.params.items()})
            stop.check()
            return self.trainer.train(request, self.registry, workdir, report, stop)

        async def progressed(event: TrainingProgress) -> None:
            span.add_event("epoch", {"epoch": event.epoch, "loss": event.loss or 0.0, "metric": event.metric or 0.0})
            await self._emit_progress(job, tenant, event)

        assert self._consumer is not None, "serve() first"
        self._consumer.pause(*self._consumer.assignment())
        with self._tracer.start_as_current_span(f"train {model}", attributes={
            tracing.MODEL: model, tracing.JOB_ID: job.job_id, "aiaas.training.time_limit_s": self.settings.max_train_s,
        }) as span:
            self._run = TrainingRun(work, StopSignal(self.settings.max_train_s), self.settings.stop_grace_s,
                                    name=f"{model}-training")
            if self._stopping.is_set():  # SIGTERM came while the job was being accepted
                self._run.stop()
            try:
                return await self._run.watch(progressed, self._keep_alive, self.settings.poll_interval_s)
            except AiaasError as exc:
                span.record_exception(exc)
                raise
            finally:
                self._run = None
                self._consumer.resume(*self._consumer.assignment())

    async def _keep_alive(self) -> None:
        """Poll the paused consumer so the group keeps us (max.poll.interval); never lose what it returns.

        A rebalance during training hands out partitions unpaused: pause them again first, and if
        the poll still returns records, seek back so they are read after this job.
        """
        assert self._consumer is not None, "serve() first"
        self._consumer.pause(*self._consumer.assignment())
        try:
            fetched = await self._consumer.getmany(timeout_ms=0)
        except Exception as exc:  # noqa: BLE001 - a broker blip or an unparseable record: not this job's fault
            log.warning("polling during training failed (%s: %s); retrying", type(exc).__name__, exc)
            return
        for partition, records in fetched.items():
            if records:
                self._consumer.seek(partition, records[0].offset)

    async def _emit_progress(self, job: Job, tenant: str | None, progress: TrainingProgress) -> None:
        """A `running` event, best effort: a lost progress event must not fail the job."""
        try:
            await self._emit(job, tenant, "running", progress=progress)
        except KafkaError as exc:
            log.warning("progress event for %s not sent (%s)", job.job_id, exc)

    def _register(self, job: Job, tenant: str | None, candidate: Candidate) -> ModelVersion:
        own_data = candidate.scored_on == "job_data"
        aliases = self.policy.aliases_for(self.registry, self.trainer.model, candidate.metrics,
                                          scored_on_job_data=own_data)
        with self._tracer.start_as_current_span(f"register {self.trainer.model}") as span:
            version = self.registry.register(
                self.trainer.model, candidate.artifact, companions=candidate.companions, aliases=aliases,
                metrics=candidate.metrics, params=candidate.params | {SCORED_ON: candidate.scored_on}
                | ({_TENANT_PARAM: tenant} if tenant else {}),
                data_hash=candidate.data_hash, parent=candidate.parent, job_id=job.job_id,
                output_profile=candidate.output_profile,
            )
            span.set_attributes({tracing.MODEL_VERSION: str(version.version), "aiaas.registry.aliases": list(aliases),
                                 "aiaas.training.scored_on": candidate.scored_on})
        return version

    async def _announce(self, version: ModelVersion) -> None:
        topic = models_topic(self.kafka.topic_prefix)
        event = ModelEvent(model=version.model, action="registered", version=version.version,
                           aliases=self.registry.aliases(version.model), job_id=version.job_id)
        assert self._producer is not None, "serve() first"
        with self._tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                                attributes=tracing.producer_attributes(topic, job_id=version.job_id)):
            await self._producer.send_and_wait(topic, event.encode(), key=version.model.encode(),
                                               headers=tracing.inject_headers())

    def _aliases_of(self, version: ModelVersion) -> list[str]:
        return [alias for alias, number in self.registry.aliases(version.model).items() if number == version.version]

    def _result_topic(self, job: Job, tenant: str | None) -> str:
        """The job's `reply_to` where the operator allows it, else its tenant's results topic (the model's for
        the shared train topic)."""
        try:
            return self._replies.result_topic(job.reply_to, tenant)
        except AiaasError:  # refused: the job already fails for it; its events go where they always may
            return self._replies.default(tenant)

    async def _emit(self, job: Job, tenant: str | None, status: str, *, outputs=None, progress=None, error=None,
                    topic: str | None = None) -> None:
        """One event for the job on its results topic (or `topic`; acks=all), in a PRODUCER span."""
        result = Result(job_id=job.job_id, model=self.trainer.model, status=status, outputs=outputs or {},
                        progress=progress, error=error, attributes=job.attributes)
        topic = topic or self._result_topic(job, tenant)
        assert self._producer is not None, "serve() first"
        with self._tracer.start_as_current_span(
            f"send {topic}", kind=SpanKind.PRODUCER,
            attributes=tracing.producer_attributes(topic, job_id=job.job_id) | {tracing.STATUS: status},
        ):
            await self._producer.send_and_wait(topic, encode(result), key=job.job_id.encode(),
                                               headers=tracing.inject_headers())
        self.metrics.event(job.job_id, status, tenant, progress)

    async def _fail(self, record: ConsumerRecord, job: Job | None, tenant: str | None, error: AiaasError,
                    span: Span) -> None:
        """`failed` event (best effort, when the job id is known) and a dead letter with the original bytes.

        Raises _Redeliver when the dead letter could not be written for now (the job is then read again).
        """
        assert self._producer is not None, "serve() first"
        span.set_status(Status(StatusCode.ERROR, f"{error.type_name}: {error}"))
        job_id = job.job_id if job else (record.key.decode(errors="replace") if record.key else None)
        log.warning("%s: training job %r failed: %s: %s", self.trainer.model, (job_id or "")[:128],
                    error.type_name, error)
        await self._emit_failed(job, job_id, tenant, error)
        dlq = dlq_topic(self.kafka.topic_prefix)
        with self._tracer.start_as_current_span(f"send {dlq}", kind=SpanKind.PRODUCER,
                                                attributes=tracing.producer_attributes(dlq, job_id=job_id)):
            try:
                await self._producer.send_and_wait(dlq, record.value or b"", key=record.key,
                                                   headers=dlq_headers(record, error, job_id)
                                                   + tracing.inject_headers())
            except Exception as exc:  # noqa: BLE001 - sorted below: wait and retry, or a bare letter
                if not refused_for_good(exc):
                    raise _Redeliver(f"the dead letter of a failed job was not written ({type(exc).__name__})") from exc
                bare = Undeliverable(f"the broker refused this job's dead letter ({type(exc).__name__}); "
                                     f"it failed with {error.type_name}: {error}")
                await self._bare_dead_letter(record, bare, job_id)

    async def _emit_failed(self, job: Job | None, job_id: str | None, tenant: str | None, error: AiaasError) -> None:
        """The `failed` event; when it cannot be sent the dead letter still records the failure."""
        if isinstance(error, Undeliverable):  # its results topic does not exist: the dead letter alone says it
            return
        info = ErrorInfo(type=error.type_name, message=str(error)[:1000], retriable=error.retriable)
        try:
            if job is None and job_id:
                job = Job(job_id=job_id[:128], model=self.trainer.model, kind="train")
            if job is not None:  # a refused reply_to is answered where results may always go
                await self._emit(job, tenant, "failed", error=info,
                                 topic=self._replies.default(tenant) if isinstance(error, RefusedReplyTo) else None)
        except Exception as exc:  # noqa: BLE001 - an id no Job accepts, a broker refusal: the dead letter remains
            log.warning("failed event for %r not sent (%s: %s)", (job_id or "")[:128], type(exc).__name__, exc)

    async def _bare_dead_letter(self, record: ConsumerRecord, error: AiaasError, job_id: str | None) -> None:
        """A dead letter without the record's value; if even that is refused, only the log keeps the job."""
        assert self._producer is not None, "serve() first"
        try:
            await self._producer.send_and_wait(dlq_topic(self.kafka.topic_prefix), b"", key=None,
                                               headers=dlq_headers(record, error, job_id))
        except Exception as exc:  # noqa: BLE001 - never stop the partition on one record
            if not refused_for_good(exc):
                raise _Redeliver(f"the dead letter of a failed job was not written ({type(exc).__name__})") from exc
            log.error("%s: no dead letter could be written for offset %d of %s-%d (%s); moving on",
                      self.trainer.model, record.offset, record.topic, record.partition, exc)


def _attempts_key(job_id: str, tenant: str | None) -> str:
    """Whose starts a job's count holds: job ids are per tenant (no job id holds a control character)."""
    return job_id if tenant is None else f"{job_id}\x00{tenant}"


def run_trainer(trainer: ModelTrainer) -> None:
    """Entry point body of a trainer process: tracing, serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = setup_tracing(f"aiaas-{trainer.model}-trainer")
    home, settings = HomeSettings(), TrainerSettings()
    service = TrainerService(trainer, KafkaSettings(), settings, Registry(home.registry_dir),
                             AttemptCounter(home.home / "training" / "attempts" / trainer.model),
                             HeaderLimits.configured())
    try:
        endpoint = open_endpoint(service.metrics.registry, service.health, settings, home=home.home, role="trainer",
                                 model=trainer.model, instance=service.group)
    except ServiceMisconfigured as exc:
        log.error("%s", exc)
        provider.shutdown()
        raise SystemExit(2) from None

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    try:
        asyncio.run(serve())
    finally:
        close_endpoint(endpoint)
        provider.shutdown()
