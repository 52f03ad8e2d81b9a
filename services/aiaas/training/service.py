"""A model type's trainer process: one training job at a time from `<prefix>.<model>.train`.

For each job: `accepted` → train on a thread of its own while `running` events stream out →
register the new version (the promotion policy picks `production` or `staging`) → announce
it on `<prefix>.models` → `succeeded`. The offset is committed only after the final event is
acknowledged, so a trainer that dies mid-job runs it again after restart (at-least-once), up to
`max_attempts` starts. While a job trains, the partitions are paused and the consumer keeps
polling, so a long run never costs the trainer its group membership (`max.poll.interval.ms`).

A training job is untrusted input, so no job can stop the trainer:

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

from .. import tracing
from ..announce import ModelEvent
from ..codec import decode_job, encode
from ..contracts import ErrorInfo, Job, Result, TrainingProgress
from ..errors import AiaasError, InvalidJob, RefusedReplyTo, TooManyAttempts, TrainingFailed, Undeliverable
from ..kafka_sink import refused_for_good
from ..promotion import default_policy
from ..registry import ModelVersion, Registry
from ..reply_topics import ReplyTopics
from ..settings import HomeSettings, KafkaSettings
from ..topic_catalog import KafkaTopicCatalog
from ..topics import ModelTopics, dlq_topic, ensure_topics, models_topic, service_topics
from ..worker import dlq_headers
from .attempts import AttemptCounter
from .protocol import SCORED_ON, Candidate, ModelTrainer
from .request import TrainingRequest
from .settings import TrainerSettings
from .stopping import StopSignal, TrainingInterrupted
from .supervise import TrainingRun

__all__ = ["TrainerService", "run_trainer"]

log = logging.getLogger("aiaas.trainer")

_REDELIVERY_PAUSE_S = 2.0
"""How long the trainer waits before reading a job again whose outcome the broker did not take (it may be down)."""


class _Redeliver(Exception):
    """The job's outcome could not be published for now: leave it uncommitted and read it again."""


class TrainerService:
    """Consumes one model type's training jobs and turns each into a registered, announced version."""

    def __init__(self, trainer: ModelTrainer, kafka: KafkaSettings, settings: TrainerSettings, registry: Registry,
                 attempts: AttemptCounter) -> None:
        self.trainer, self.kafka, self.settings, self.registry = trainer, kafka, settings, registry
        self.attempts = attempts
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
        self._catalog: KafkaTopicCatalog | None = None

    def stop(self) -> None:
        """Leave the group: a job in training stops at its next step and stays uncommitted (it runs again);
        a job past training finishes (final event, commit) first."""
        self._stopping.set()
        if self._run is not None:
            self._run.stop()

    async def run(self) -> None:
        """Serve training jobs until `stop()`."""
        await ensure_topics(self.kafka, service_topics(self.trainer.model, self.kafka))
        self._producer = AIOKafkaProducer(**self.kafka.connection_kwargs(), acks="all", enable_idempotence=True,
                                          client_id=f"aiaas-{self.trainer.model}-trainer")
        self._consumer = AIOKafkaConsumer(
            self.topics.train, **self.kafka.connection_kwargs(), group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=f"aiaas-{self.trainer.model}-trainer",
            max_partition_fetch_bytes=self.kafka.max_message_bytes + 64 * 1024,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
        )
        await self._producer.start()
        await self._consumer.start()
        self._catalog = KafkaTopicCatalog(self._producer)
        log.info("%s trainer ready: consuming %s as group %s (policy %s on %s; data roots %s)", self.trainer.model,
                 self.topics.train, self.group, self.policy.mode, self.policy.metric,
                 ", ".join(map(str, self.settings.data_roots)) or "none")
        try:
            while not self._stopping.is_set():
                try:
                    fetched = await self._consumer.getmany(timeout_ms=500, max_records=1)
                except KafkaError as exc:  # the broker away, a record the client cannot parse: never exit on it
                    log.error("%s: fetching training jobs failed (%s: %s); trying again", self.trainer.model,
                              type(exc).__name__, exc)
                    await asyncio.sleep(_REDELIVERY_PAUSE_S)
                    continue
                for record in (r for records in fetched.values() for r in records):
                    await self._handle(record)
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    async def _handle(self, record: ConsumerRecord) -> None:
        """One training job, from its record to its committed offset; never raises for what the job holds."""
        partition = TopicPartition(record.topic, record.partition)
        try:
            job = await self._outcome(record)
        except TrainingInterrupted:
            log.info("%s: training of %s stopped; not committed, it runs again", self.trainer.model, partition)
            return
        except _Redeliver as exc:
            log.warning("%s: %s; reading offset %d of %s again in %gs", self.trainer.model, exc, record.offset,
                        partition, _REDELIVERY_PAUSE_S)
            if partition in self._consumer.assignment():
                self._consumer.seek(partition, record.offset)
            await asyncio.sleep(_REDELIVERY_PAUSE_S)
            return
        if partition not in self._consumer.assignment():
            log.warning("%s moved to another trainer during the job; it will run the job again", partition)
            return
        try:
            await self._consumer.commit({partition: record.offset + 1})
        except KafkaError as exc:  # the group rebalanced: the new owner runs the job again (at-least-once)
            log.warning("commit after job failed (%s); the job may run again", exc)
            return
        if job is not None:
            try:
                self.attempts.forget(job.job_id)
            except OSError as exc:  # a stale count only matters if the same job id comes again
                log.warning("attempt count of %r not removed (%s)", job.job_id[:128], exc)

    async def _outcome(self, record: ConsumerRecord) -> Job | None:
        """Run the record's job and publish its final outcome (succeeded, or failed + dead letter); the job, if any.

        Raises TrainingInterrupted (stopping) or _Redeliver (the broker did not take the outcome, for now).
        """
        try:
            context = tracing.extract_context(record.headers)
        except Exception:  # noqa: BLE001 - a header no propagator can read must not stop the trainer
            context = None
        with self._tracer.start_as_current_span(
            f"process {record.topic}", context=context, kind=SpanKind.CONSUMER,
            attributes=tracing.consumer_attributes(record.topic, record.partition, record.offset, group=self.group),
        ) as span:
            job = None
            try:
                job = decode_job(record.value or b"", self.kafka.max_message_bytes)
                span.set_attribute(tracing.JOB_ID, job.job_id)
                await self._train(job, record, span)
                return job
            except (TrainingInterrupted, _Redeliver):
                raise
            except KafkaError as exc:
                if not refused_for_good(exc):
                    raise _Redeliver(f"the broker did not take an event of job {job.job_id if job else '?'} "
                                     f"({type(exc).__name__})") from exc
                error: AiaasError = TrainingFailed(f"the broker refused an event of this job: {type(exc).__name__}: {exc}")
            except AiaasError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - OSError, MemoryError, a bug: the job fails, the trainer goes on
                span.record_exception(exc)
                error = TrainingFailed(f"{type(exc).__name__}: {exc}"[:1000])
            await self._fail(record, job, error, span)
            return job

    async def _train(self, job: Job, record: ConsumerRecord, span: Span) -> None:
        if job.kind != "train" or job.model != self.trainer.model:
            raise InvalidJob(f"{self.topics.train} takes `train` jobs for {self.trainer.model!r}; "
                             f"got a {job.kind!r} job for {job.model!r}")
        topic = self._replies.result_topic(job.reply_to, None)  # a refused reply_to fails the job before it runs
        if topic != self.topics.results and await self._catalog.missing({topic}):
            raise RefusedReplyTo(f"reply_to {topic[:100]!r} is refused: the topic does not exist")
        attempt = self.attempts.start(job.job_id)
        span.set_attribute("aiaas.training.attempt", attempt)
        if attempt > self.settings.max_attempts:
            raise TooManyAttempts(f"started {attempt - 1} times without finishing (the trainer kept stopping); "
                                  f"giving up after max_attempts={self.settings.max_attempts}")
        await self._emit(job, "accepted", outputs={"attempt": attempt})
        done = [v for v in self.registry.versions(self.trainer.model) if v.job_id == job.job_id]
        if done:  # a rerun after a crash between registering and committing: do not register twice
            version = done[-1]
            log.info("%s: job %s already produced v%d; not training again", self.trainer.model, job.job_id, version.version)
        else:
            with tempfile.TemporaryDirectory(prefix="aiaas-train-") as workdir:
                try:
                    candidate = await self._run_training(job, Path(workdir))
                except TrainingInterrupted:
                    self._withdraw(job.job_id)
                    raise
                version = self._register(job, candidate)
        await self._announce(version)
        await self._emit(job, "succeeded", outputs=self._succeeded_outputs(version))
        log.info("%s: job %s → v%d %s", self.trainer.model, job.job_id, version.version, version.metrics)

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

    async def _run_training(self, job: Job, workdir: Path) -> Candidate:
        """Check the job's data and train, on a thread of its own, within the time limit; stream its progress;
        keep the (paused) consumer polling meanwhile."""
        model = self.trainer.model

        def work(stop: StopSignal, report) -> Candidate:
            request = TrainingRequest.from_job(job, self.settings)  # reading a data file counts against the limit
            span.set_attributes({f"aiaas.training.{k}": v for k, v in request.params.items()})
            stop.check()
            return self.trainer.train(request, self.registry, workdir, report, stop)

        async def progressed(event: TrainingProgress) -> None:
            span.add_event("epoch", {"epoch": event.epoch, "loss": event.loss or 0.0, "metric": event.metric or 0.0})
            await self._emit_progress(job, event)

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
        self._consumer.pause(*self._consumer.assignment())
        try:
            fetched = await self._consumer.getmany(timeout_ms=0)
        except KafkaError as exc:  # a broker blip must not fail the training job
            log.warning("polling during training failed (%s); retrying", exc)
            return
        for partition, records in fetched.items():
            if records:
                self._consumer.seek(partition, records[0].offset)

    async def _emit_progress(self, job: Job, progress: TrainingProgress) -> None:
        """A `running` event, best effort: a lost progress event must not fail the job."""
        try:
            await self._emit(job, "running", progress=progress)
        except KafkaError as exc:
            log.warning("progress event for %s not sent (%s)", job.job_id, exc)

    def _register(self, job: Job, candidate: Candidate) -> ModelVersion:
        own_data = candidate.scored_on == "job_data"
        aliases = self.policy.aliases_for(self.registry, self.trainer.model, candidate.metrics,
                                          scored_on_job_data=own_data)
        with self._tracer.start_as_current_span(f"register {self.trainer.model}") as span:
            version = self.registry.register(
                self.trainer.model, candidate.artifact, companions=candidate.companions, aliases=aliases,
                metrics=candidate.metrics, params=candidate.params | {SCORED_ON: candidate.scored_on},
                data_hash=candidate.data_hash, parent=candidate.parent, job_id=job.job_id,
            )
            span.set_attributes({tracing.MODEL_VERSION: str(version.version), "aiaas.registry.aliases": list(aliases),
                                 "aiaas.training.scored_on": candidate.scored_on})
        return version

    async def _announce(self, version: ModelVersion) -> None:
        topic = models_topic(self.kafka.topic_prefix)
        event = ModelEvent(model=version.model, action="registered", version=version.version,
                           aliases=self.registry.aliases(version.model), job_id=version.job_id)
        with self._tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                                attributes=tracing.producer_attributes(topic, job_id=version.job_id)):
            await self._producer.send_and_wait(topic, event.encode(), key=version.model.encode(),
                                               headers=tracing.inject_headers())

    def _aliases_of(self, version: ModelVersion) -> list[str]:
        return [alias for alias, number in self.registry.aliases(version.model).items() if number == version.version]

    def _result_topic(self, job: Job) -> str:
        """The job's `reply_to` where the operator allows it, else the model's results topic."""
        try:
            return self._replies.result_topic(job.reply_to, None)
        except AiaasError:  # refused: the job already fails for it; its events go where they always may
            return self.topics.results

    async def _emit(self, job: Job, status: str, *, outputs=None, progress=None, error=None,
                    topic: str | None = None) -> None:
        """One event for the job on its results topic (or `topic`; acks=all), in a PRODUCER span."""
        result = Result(job_id=job.job_id, model=self.trainer.model, status=status, outputs=outputs or {},
                        progress=progress, error=error, attributes=job.attributes)
        topic = topic or self._result_topic(job)
        with self._tracer.start_as_current_span(
            f"send {topic}", kind=SpanKind.PRODUCER,
            attributes=tracing.producer_attributes(topic, job_id=job.job_id) | {tracing.STATUS: status},
        ):
            await self._producer.send_and_wait(topic, encode(result), key=job.job_id.encode(),
                                               headers=tracing.inject_headers())

    async def _fail(self, record: ConsumerRecord, job: Job | None, error: AiaasError, span: Span) -> None:
        """`failed` event (best effort, when the job id is known) and a dead letter with the original bytes.

        Raises _Redeliver when the dead letter could not be written for now (the job is then read again).
        """
        span.set_status(Status(StatusCode.ERROR, f"{error.type_name}: {error}"))
        job_id = job.job_id if job else (record.key.decode(errors="replace") if record.key else None)
        log.warning("%s: training job %r failed: %s: %s", self.trainer.model, (job_id or "")[:128],
                    error.type_name, error)
        await self._emit_failed(job, job_id, error)
        dlq = dlq_topic(self.kafka.topic_prefix)
        with self._tracer.start_as_current_span(f"send {dlq}", kind=SpanKind.PRODUCER,
                                                attributes=tracing.producer_attributes(dlq, job_id=job_id)):
            try:
                await self._producer.send_and_wait(dlq, record.value or b"", key=record.key,
                                                   headers=dlq_headers(record, error, job_id) + tracing.inject_headers())
            except Exception as exc:  # noqa: BLE001 - sorted below: wait and retry, or a bare letter
                if not refused_for_good(exc):
                    raise _Redeliver(f"the dead letter of a failed job was not written ({type(exc).__name__})") from exc
                bare = Undeliverable(f"the broker refused this job's dead letter ({type(exc).__name__}); "
                                     f"it failed with {error.type_name}: {error}")
                await self._bare_dead_letter(record, bare, job_id)

    async def _emit_failed(self, job: Job | None, job_id: str | None, error: AiaasError) -> None:
        """The `failed` event; when it cannot be sent the dead letter still records the failure."""
        info = ErrorInfo(type=error.type_name, message=str(error)[:1000], retriable=error.retriable)
        try:
            if job is None and job_id:
                job = Job(job_id=job_id[:128], model=self.trainer.model, kind="train")
            if job is not None:  # a refused reply_to is answered where results may always go
                await self._emit(job, "failed", error=info,
                                 topic=self.topics.results if isinstance(error, RefusedReplyTo) else None)
        except Exception as exc:  # noqa: BLE001 - an id no Job accepts, a broker refusal: the dead letter remains
            log.warning("failed event for %r not sent (%s: %s)", (job_id or "")[:128], type(exc).__name__, exc)

    async def _bare_dead_letter(self, record: ConsumerRecord, error: AiaasError, job_id: str | None) -> None:
        """A dead letter without the record's value; if even that is refused, only the log keeps the job."""
        try:
            await self._producer.send_and_wait(dlq_topic(self.kafka.topic_prefix), b"", key=None,
                                               headers=dlq_headers(record, error, job_id))
        except Exception as exc:  # noqa: BLE001 - never stop the partition on one record
            if not refused_for_good(exc):
                raise _Redeliver(f"the dead letter of a failed job was not written ({type(exc).__name__})") from exc
            log.error("%s: no dead letter could be written for offset %d of %s-%d (%s); moving on",
                      self.trainer.model, record.offset, record.topic, record.partition, exc)


def run_trainer(trainer: ModelTrainer) -> None:
    """Entry point body of a trainer process: tracing, serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = tracing.setup_tracing(f"aiaas-{trainer.model}-trainer")
    home = HomeSettings()
    service = TrainerService(trainer, KafkaSettings(), TrainerSettings(), Registry(home.registry_dir),
                             AttemptCounter(home.home / "training" / "attempts" / trainer.model))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    try:
        asyncio.run(serve())
    finally:
        provider.shutdown()
