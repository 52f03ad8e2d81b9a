"""A model type's trainer process: one training job at a time from `<prefix>.<model>.train`.

For each job: `accepted` → train on a worker thread while `running` events stream out →
register the new version (the promotion policy picks `production` or `staging`) → announce
it on `<prefix>.models` → `succeeded`. A bad job or a failed run ends `failed` with a dead
letter. The offset is committed only after the final event is acknowledged, so a trainer
that dies mid-job runs it again after restart (at-least-once), up to `max_attempts` starts.
While a job trains, the partitions are paused and the consumer keeps polling, so a long
run never costs the trainer its group membership (`max.poll.interval.ms`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
from ..errors import AiaasError, InvalidJob, TooManyAttempts, TrainingFailed
from ..promotion import PromotionPolicy, default_policy
from ..registry import ModelVersion, Registry
from ..settings import HomeSettings, KafkaSettings
from ..topics import ModelTopics, dlq_topic, ensure_topics, models_topic, service_topics
from ..worker import dlq_headers
from .attempts import AttemptCounter
from .protocol import Candidate, ModelTrainer
from .request import TrainingRequest
from .settings import TrainerSettings

__all__ = ["TrainerService", "run_trainer"]

log = logging.getLogger("aiaas.trainer")


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
        self._tracer = trace.get_tracer(tracing.TRACER_NAME)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{trainer.model}-training")
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None

    def stop(self) -> None:
        """Finish the job in hand (its final event and commit), then leave the group."""
        self._stopping.set()

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
        log.info("%s trainer ready: consuming %s as group %s (policy %s on %s)", self.trainer.model,
                 self.topics.train, self.group, self.policy.mode, self.policy.metric)
        try:
            while not self._stopping.is_set():
                fetched = await self._consumer.getmany(timeout_ms=500, max_records=1)
                for record in (r for records in fetched.values() for r in records):
                    await self._handle(record)
        finally:
            await self._consumer.stop()
            await self._producer.stop()
            self._thread.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, record: ConsumerRecord) -> None:
        """One training job, from its record to its committed offset."""
        with self._tracer.start_as_current_span(
            f"process {record.topic}", context=tracing.extract_context(record.headers), kind=SpanKind.CONSUMER,
            attributes=tracing.consumer_attributes(record.topic, record.partition, record.offset, group=self.group),
        ) as span:
            job = None
            try:
                job = decode_job(record.value or b"", self.kafka.max_message_bytes)
                span.set_attribute(tracing.JOB_ID, job.job_id)
                await self._train(job, record, span)
            except AiaasError as exc:
                await self._fail(record, job, exc, span)
        partition = TopicPartition(record.topic, record.partition)
        if partition not in self._consumer.assignment():
            log.warning("%s moved to another trainer during the job; it will run the job again", partition)
            return
        try:
            await self._consumer.commit({partition: record.offset + 1})
        except KafkaError as exc:  # the group rebalanced: the new owner runs the job again (at-least-once)
            log.warning("commit after job failed (%s); the job may run again", exc)
            return
        if job is not None:
            self.attempts.forget(job.job_id)

    async def _train(self, job: Job, record: ConsumerRecord, span: Span) -> None:
        if job.kind != "train" or job.model != self.trainer.model:
            raise InvalidJob(f"{self.topics.train} takes `train` jobs for {self.trainer.model!r}; "
                             f"got a {job.kind!r} job for {job.model!r}")
        attempt = self.attempts.start(job.job_id)
        span.set_attribute("aiaas.training.attempt", attempt)
        if attempt > self.settings.max_attempts:
            raise TooManyAttempts(f"started {attempt - 1} times without finishing (the trainer kept stopping); "
                                  f"giving up after max_attempts={self.settings.max_attempts}")
        await self._emit(job, "accepted", outputs={"attempt": attempt})
        request = TrainingRequest.from_job(job, self.settings.max_data_bytes)
        done = [v for v in self.registry.versions(self.trainer.model) if v.job_id == job.job_id]
        if done:  # a rerun after a crash between registering and committing: do not register twice
            version = done[-1]
            log.info("%s: job %s already produced v%d; not training again", self.trainer.model, job.job_id, version.version)
        else:
            with tempfile.TemporaryDirectory(prefix="aiaas-train-") as workdir:
                candidate = await self._run_training(job, request, Path(workdir))
                version = self._register(job, candidate)
        await self._announce(version)
        await self._emit(job, "succeeded", outputs={
            "version": version.version, "aliases": sorted(self._aliases_of(version)),
            **{f"metric.{name}": float(value) for name, value in version.metrics.items()},
        })
        log.info("%s: job %s → v%d %s", self.trainer.model, job.job_id, version.version, version.metrics)

    async def _run_training(self, job: Job, request: TrainingRequest, workdir: Path) -> Candidate:
        """Train on the worker thread; stream its progress; keep the (paused) consumer polling meanwhile."""
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[TrainingProgress] = asyncio.Queue()
        report = lambda p: loop.call_soon_threadsafe(progress.put_nowait, p)  # noqa: E731 - called from the thread
        self._consumer.pause(*self._consumer.assignment())
        with self._tracer.start_as_current_span(f"train {self.trainer.model}", attributes={
            tracing.MODEL: self.trainer.model, tracing.JOB_ID: job.job_id,
            **{f"aiaas.training.{k}": v for k, v in request.params.items()},
        }) as span:
            training = loop.run_in_executor(self._thread, self.trainer.train, request, self.registry, workdir, report)
            try:
                polled = loop.time()
                while not training.done() or not progress.empty():
                    try:
                        event = await asyncio.wait_for(progress.get(), self.settings.poll_interval_s)
                    except TimeoutError:
                        event = None
                    if loop.time() - polled >= self.settings.poll_interval_s:
                        await self._keep_alive()
                        polled = loop.time()
                    if event is not None:
                        span.add_event("epoch", {"epoch": event.epoch, "loss": event.loss or 0.0,
                                                 "metric": event.metric or 0.0})
                        await self._emit_progress(job, event)
                try:
                    return await training
                except AiaasError:
                    raise
                except Exception as exc:
                    span.record_exception(exc)
                    raise TrainingFailed(f"{type(exc).__name__}: {exc}") from exc
            finally:
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
        aliases = self.policy.aliases_for(self.registry, self.trainer.model, candidate.metrics)
        with self._tracer.start_as_current_span(f"register {self.trainer.model}") as span:
            version = self.registry.register(
                self.trainer.model, candidate.artifact, companions=candidate.companions, aliases=aliases,
                metrics=candidate.metrics, params=candidate.params, data_hash=candidate.data_hash,
                parent=candidate.parent, job_id=job.job_id,
            )
            span.set_attributes({tracing.MODEL_VERSION: str(version.version), "aiaas.registry.aliases": list(aliases)})
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

    async def _emit(self, job: Job, status: str, *, outputs=None, progress=None, error=None) -> None:
        """One event for the job on its results topic (acks=all), in a PRODUCER span."""
        result = Result(job_id=job.job_id, model=self.trainer.model, status=status, outputs=outputs or {},
                        progress=progress, error=error, attributes=job.attributes)
        topic = job.reply_to or self.topics.results
        with self._tracer.start_as_current_span(
            f"send {topic}", kind=SpanKind.PRODUCER,
            attributes=tracing.producer_attributes(topic, job_id=job.job_id) | {tracing.STATUS: status},
        ):
            await self._producer.send_and_wait(topic, encode(result), key=job.job_id.encode(),
                                               headers=tracing.inject_headers())

    async def _fail(self, record: ConsumerRecord, job: Job | None, error: AiaasError, span: Span) -> None:
        """`failed` event (when the job id is known) and a dead letter with the original bytes."""
        span.set_status(Status(StatusCode.ERROR, f"{error.type_name}: {error}"))
        log.warning("%s: training job %s failed: %s: %s", self.trainer.model,
                    job.job_id if job else record.key, error.type_name, error)
        job_id = job.job_id if job else (record.key.decode(errors="replace") if record.key else None)
        info = ErrorInfo(type=error.type_name, message=str(error), retriable=error.retriable)
        if job is not None:
            await self._emit(job, "failed", error=info)
        elif job_id:
            stub = Job(job_id=job_id[:128], model=self.trainer.model, kind="train")
            await self._emit(stub, "failed", error=info)
        headers = dlq_headers(record, error, job_id)
        dlq = dlq_topic(self.kafka.topic_prefix)
        with self._tracer.start_as_current_span(f"send {dlq}", kind=SpanKind.PRODUCER,
                                                attributes=tracing.producer_attributes(dlq, job_id=job_id)):
            await self._producer.send_and_wait(dlq, record.value or b"", key=record.key,
                                               headers=headers + tracing.inject_headers())


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
