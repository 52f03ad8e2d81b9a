"""The async Python client: publish jobs, await one job's result, stream a results topic.

    async with AiaasClient() as client:
        handle = await client.submit("vision", {"image": Tensor.from_numpy(pixels)})
        result = await handle.result(timeout=10)
        async for result in client.results("vision"):
            ...
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import tracing
from .codec import decode_result, encode
from .contracts import TERMINAL_STATUSES, InputValue, Job, Result, new_job_id
from .errors import AiaasError, BrokerUnavailable
from .settings import KafkaSettings
from .topics import ModelTopics, ensure_topics, partition_count

__all__ = ["AiaasClient", "JobHandle", "broker_unreachable"]


def broker_unreachable(settings: KafkaSettings, exc: BaseException) -> BrokerUnavailable:
    """The one-line error a person sees when Kafka does not answer."""
    return BrokerUnavailable(
        f"cannot reach Kafka at {settings.bootstrap_servers} ({type(exc).__name__}). "
        "Start the local broker with `infra/kafka/kafka.sh start` (or `make kafka`), "
        "or point AIAAS_KAFKA_BOOTSTRAP_SERVERS at your cluster."
    )


@dataclass
class JobHandle:
    """A published job; `await handle.result(timeout)` returns its result."""

    job: Job
    sent_at: float
    partition: int
    offset: int
    _future: asyncio.Future[tuple[Result, float]] = field(repr=False)
    _progress: asyncio.Queue[Result] = field(default_factory=asyncio.Queue, repr=False)
    received_at: float | None = None
    """When the result reached this client (Unix seconds); set once `result()` has returned."""

    async def events(self, timeout: float | None = None) -> AsyncIterator[Result]:
        """A training job's events as they arrive (`accepted`, `running`…), ending with its final result.

        `timeout` bounds the wait for each next event (TimeoutError names the job).
        """
        while True:
            progress = asyncio.ensure_future(self._progress.get())
            done, _ = await asyncio.wait({progress, self._future}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if progress in done:
                yield progress.result()
                continue
            progress.cancel()
            if not done:
                raise TimeoutError(f"no event for job {self.job_id} within {timeout}s: is the {self.job.model} trainer running?")
            while not self._progress.empty():  # events that arrived together with the final one
                yield self._progress.get_nowait()
            yield await self.result(timeout=None)
            return

    @property
    def job_id(self) -> str:
        """The job's id (its Kafka key)."""
        return self.job.job_id

    async def result(self, timeout: float | None = 30.0) -> Result:
        """Wait for this job's result; raises TimeoutError naming the job when none arrives in time."""
        try:
            result, self.received_at = await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no result for job {self.job_id} within {timeout}s: is the {self.job.model} service running?"
            ) from None
        return result

    @property
    def latency_ms(self) -> float | None:
        """Publish → result receipt, in milliseconds (None until the result is in)."""
        return None if self.received_at is None else (self.received_at - self.sent_at) * 1000


class _SeenIds:
    """The most recent results seen, to drop duplicates (bounded memory).

    A job's final result is seen once per job id; a training job's progress events once per
    (job id, status, epoch), so a replayed training run does not repeat them either.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._ids: OrderedDict[tuple, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, result: Result) -> bool:
        key = (result.job_id,) if result.status in TERMINAL_STATUSES else \
            (result.job_id, result.status, result.progress.epoch if result.progress else None)
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


class AiaasClient:
    """Publishes jobs and reads results over Kafka (aiokafka: idempotent producer, acks=all)."""

    def __init__(self, kafka: KafkaSettings | None = None) -> None:
        self.kafka = kafka or KafkaSettings()
        self._producer: AIOKafkaProducer | None = None
        self._listeners: dict[str, _ResultListener] = {}
        self._known_topics: set[str] = set()
        self._setup_lock = asyncio.Lock()  # concurrent submits share one topic check and one listener
        self._tracer = trace.get_tracer(tracing.TRACER_NAME)

    async def __aenter__(self) -> "AiaasClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect the producer; raises BrokerUnavailable with what to do when Kafka is not there."""
        producer = AIOKafkaProducer(
            **self.kafka.connection_kwargs(), acks="all", enable_idempotence=True, linger_ms=2,
            max_request_size=self.kafka.max_message_bytes + 64 * 1024,
        )
        try:
            await producer.start()
        except KafkaConnectionError as exc:
            await producer.stop()
            raise broker_unreachable(self.kafka, exc) from exc
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close everything."""
        for listener in self._listeners.values():
            await listener.stop()
        self._listeners.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def submit(
        self,
        model: str,
        inputs: Mapping[str, InputValue],
        *,
        task: str | None = None,
        version: str | None = None,
        priority: int = 0,
        deadline_s: float | None = None,
        reply_to: str | None = None,
        tenant: str | None = None,
        attributes: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> JobHandle:
        """Publish one inference job; returns once the broker has it. Await `.result()` for the outcome."""
        now = time.time()
        job = Job(
            model=model, inputs=dict(inputs), task=task, model_version=version, priority=priority,
            deadline=now + deadline_s if deadline_s else None, reply_to=reply_to, tenant=tenant,
            attributes=dict(attributes or {}), created_at=now, job_id=job_id or new_job_id(),
        )
        return await self.submit_job(job)

    async def train(
        self,
        model: str,
        inputs: Mapping[str, InputValue] | None = None,
        *,
        attributes: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> JobHandle:
        """Publish a training job to `<prefix>.<model>.train`.

        `inputs` holds hyper-parameters (`epochs`, `learning_rate`, `batch_size`, `seed`), the data
        (inline columns, or `data_uri` + `data_sha256`) and `base_version`; all optional.
        Follow it with `handle.events()`; `await handle.result()` is its `succeeded`/`failed` event.
        """
        job = Job(kind="train", model=model, inputs=dict(inputs or {}), attributes=dict(attributes or {}),
                  job_id=job_id or new_job_id())
        return await self.submit_job(job)

    async def submit_job(self, job: Job) -> JobHandle:
        """Publish a ready-made Job envelope (to `.train` for a training job, `.infer` otherwise)."""
        producer = self._require_producer()
        topics = ModelTopics.of(job.model, self.kafka.topic_prefix)
        target = topics.train if job.kind == "train" else topics.infer
        results_topic = job.reply_to or topics.results
        async with self._setup_lock:
            await self._ensure({target, results_topic})
            listener = await self._listener(results_topic)
        future, progress = listener.expect(job.job_id)
        with self._tracer.start_as_current_span(
            f"send {target}", kind=SpanKind.PRODUCER,
            attributes=tracing.producer_attributes(target, job_id=job.job_id) | {tracing.MODEL: job.model},
        ) as span:
            sent_at = time.time()
            try:
                meta = await producer.send_and_wait(
                    target, encode(job), key=job.job_id.encode(), headers=tracing.inject_headers()
                )
            except KafkaError as exc:
                raise broker_unreachable(self.kafka, exc) from exc
            span.set_attribute("messaging.destination.partition.id", str(meta.partition))
            span.set_attribute("messaging.kafka.offset", meta.offset)
        return JobHandle(job, sent_at, meta.partition, meta.offset, future, progress)

    async def results(self, model: str, *, from_beginning: bool = False, topic: str | None = None,
                      idle_timeout: float | None = None) -> AsyncIterator[Result]:
        """Iterate over a model's results topic, each job id once (duplicates from redelivery dropped).

        Starts at the end (new results only) unless `from_beginning`; with `idle_timeout`, stops
        after that many seconds without a new result.
        """
        topic = topic or ModelTopics.of(model, self.kafka.topic_prefix).results
        await self._ensure({topic})
        consumer = await _start_reader(self.kafka, topic, from_beginning)
        seen = _SeenIds()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=int((idle_timeout or 1.0) * 1000))
                if not batches and idle_timeout is not None:
                    return
                for record in (r for records in batches.values() for r in records):
                    result = _receive(self._tracer, record, self.kafka.max_message_bytes)
                    if result is not None and seen.first_time(result):
                        yield result
        finally:
            await consumer.stop()

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("AiaasClient is not started: use `async with AiaasClient() as client:`")
        return self._producer

    async def _ensure(self, topics: set[str]) -> None:
        missing = topics - self._known_topics
        if missing:
            try:
                await ensure_topics(self.kafka, sorted(missing))
            except KafkaConnectionError as exc:
                raise broker_unreachable(self.kafka, exc) from exc
            self._known_topics |= missing

    async def _listener(self, topic: str) -> "_ResultListener":
        if topic not in self._listeners:
            self._listeners[topic] = await _ResultListener.start(self, topic)
        return self._listeners[topic]


def _receive(tracer: trace.Tracer, record: ConsumerRecord, max_bytes: int) -> Result | None:
    """Decode one result inside a CONSUMER span continuing the job's trace (None if undecodable)."""
    with tracer.start_as_current_span(
        f"process {record.topic}", context=tracing.extract_context(record.headers), kind=SpanKind.CONSUMER,
        attributes=tracing.consumer_attributes(record.topic, record.partition, record.offset),
    ) as span:
        try:
            result = decode_result(record.value or b"", max_bytes)
        except AiaasError:
            return None
        span.set_attribute(tracing.JOB_ID, result.job_id)
        span.set_attribute(tracing.STATUS, result.status)
        return result


async def _start_reader(kafka: KafkaSettings, topic: str, from_beginning: bool) -> AIOKafkaConsumer:
    """A group-less consumer on every partition of `topic`, positioned before it returns."""
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024)
    await consumer.start()
    # The consumer's metadata may predate a topic created a moment ago: ask the cluster itself.
    partitions = consumer.partitions_for_topic(topic) or range(await partition_count(kafka, topic, wait_s=5))
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    if from_beginning:
        await consumer.seek_to_beginning(*assigned)
    else:
        await consumer.seek_to_end(*assigned)
    for tp in assigned:  # pin the positions now, so nothing published after this call is missed
        await consumer.position(tp)
    return consumer


class _ResultListener:
    """Reads one results topic from 'now' and completes the futures of jobs this client sent."""

    def __init__(self, client: AiaasClient, consumer: AIOKafkaConsumer) -> None:
        self._tracer = trace.get_tracer(tracing.TRACER_NAME)
        self._max_bytes = client.kafka.max_message_bytes
        self._consumer = consumer
        self._waiting: dict[str, tuple[asyncio.Future[tuple[Result, float]], asyncio.Queue[Result]]] = {}
        self._task = asyncio.create_task(self._run())

    @classmethod
    async def start(cls, client: AiaasClient, topic: str) -> "_ResultListener":
        return cls(client, await _start_reader(client.kafka, topic, from_beginning=False))

    def expect(self, job_id: str) -> tuple[asyncio.Future[tuple[Result, float]], asyncio.Queue[Result]]:
        future = asyncio.get_running_loop().create_future()
        progress: asyncio.Queue[Result] = asyncio.Queue()
        self._waiting[job_id] = (future, progress)
        return future, progress

    async def _run(self) -> None:
        async for record in self._consumer:
            key = record.key.decode(errors="replace") if record.key else None
            if key not in self._waiting:
                continue  # someone else's job, or a duplicate of one already answered
            result = _receive(self._tracer, record, self._max_bytes)
            if result is None or result.job_id not in self._waiting:
                continue
            if result.status not in TERMINAL_STATUSES:
                self._waiting[result.job_id][1].put_nowait(result)
                continue
            future, _ = self._waiting.pop(result.job_id)
            if not future.done():
                future.set_result((result, time.time()))

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        await self._consumer.stop()
