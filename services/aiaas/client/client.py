"""The async Python client: publish jobs, await one job's result, stream a results topic.

    async with AiaasClient() as client:
        handle = await client.submit("vision", {"image": Tensor.from_numpy(pixels)})
        result = await handle.result(timeout=10)
        async for result in client.results("vision"):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableSet, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CorruptRecordException, KafkaConnectionError, KafkaError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from aiaas import tracing
from aiaas.client.seen_file import SeenFile
from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import (
    JOB_ID_PATTERN,
    TERMINAL_STATUSES,
    ChatMessage,
    GenerationParams,
    InputValue,
    Job,
    Result,
    new_job_id,
)
from aiaas.contract.priority import priority_headers
from aiaas.contract.topics import ModelTopics
from aiaas.errors import SeenFileLocked
from aiaas.kafka.admin import ensure_topics, partition_count
from aiaas.kafka.diagnostics import broker_unreachable, explain_connection_failure
from aiaas.settings import KafkaSettings

__all__ = ["AiaasClient", "JobHandle", "StreamRestart", "SeenFile", "SeenFileLocked"]

log = logging.getLogger("aiaas.client")

_COMMIT_INTERVAL_S = 1.0
"""How often a group reader (`results(group_id=...)`) commits the offsets of what it handed over."""
_METADATA_MAX_AGE_MS = 5_000
"""How often a reader refreshes its view of the cluster, and so how soon it sees partitions added to its
topic (aiokafka's default, five minutes, would leave the results on a new partition unread that long)."""
_FOLLOW_INTERVAL_S = 1.0
"""How often a group-less reader compares its partitions with the topic's (a look at cached metadata)."""
_PROBE_TIMEOUT_MS = 1_500
"""How long a reader waits for one partition's records while it looks for a record it cannot parse: a
fetch already in flight (up to aiokafka's fetch_max_wait_ms, 500 ms) must come back before a new one."""
_PROBE_MAX_RECORDS = 500
"""The most records one search for an unparseable record steps through, per partition."""
_RESTART_BACKOFF_S = (0.1, 30.0)
"""The result listener's wait before restarting after an error: the first, doubling up to the last."""
_JOB_ID = re.compile(JOB_ID_PATTERN)
"""The contract's job id: 1 to 128 characters, no control characters."""
_UNPARSEABLE = (CorruptRecordException, ValueError, IndexError, struct.error)
"""What aiokafka raises from `getmany` for a record it cannot parse (a header key that is not UTF-8 raises
UnicodeDecodeError from its C parser, CorruptRecordException from its Python one); its position stays put."""


@dataclass(frozen=True)
class StreamRestart:
    """In `JobHandle.stream()`: the job runs again from its start (a new run); the text so far is void."""

    run: str


@dataclass
class JobHandle:
    """A published job; `await handle.result(timeout)` returns its result.

    A handle that times out is forgotten by the client's result listener (nothing of it is kept while
    nobody waits); waiting on it again watches for the job's result anew, from then on. Any number of
    handles may wait for one job id (the same job submitted twice): each gets the result.
    """

    job: Job
    sent_at: float
    partition: int
    offset: int
    _future: asyncio.Future[tuple[Result, float]] = field(repr=False)
    _progress: asyncio.Queue[Result] = field(default_factory=asyncio.Queue, repr=False)
    received_at: float | None = None
    """When the result reached this client (Unix seconds); set once `result()` has returned."""
    _listener: _ResultListener | None = field(default=None, repr=False)

    async def events(self, timeout: float | None = None) -> AsyncIterator[Result]:
        """A training job's events as they arrive (`accepted`, `running`…), ending with its final result.

        `timeout` bounds the wait for each next event (TimeoutError names the job).
        """
        while True:
            self._watch()
            progress = asyncio.ensure_future(self._progress.get())
            waiting: set[asyncio.Future[Any]] = {progress, self._future}
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if progress in done:
                yield progress.result()
                continue
            progress.cancel()
            if not done:
                self._forget()
                raise TimeoutError(f"no event for job {self.job_id} within {timeout}s: "
                                   f"is the {self.job.model} trainer running?")
            while not self._progress.empty():  # events that arrived together with the final one
                yield self._progress.get_nowait()
            yield await self.result(timeout=None)
            return

    async def stream(self, timeout: float | None = 60.0) -> AsyncIterator[str | StreamRestart | Result]:
        """A streaming job's answer as it is made (the `llm` model type): each new piece of text (`str`), then its
        final `Result` (the whole text in `outputs["text"]`).

        Repeated chunks are dropped. If the job is run again (the service restarted mid-answer), its text starts
        over: a `StreamRestart` comes first, and what was yielded before it is no longer the answer's start.
        `timeout` bounds the wait for each next piece (TimeoutError names the job).
        """
        run: str | None = None
        seen: set[tuple[str, int]] = set()
        async for event in self.events(timeout):
            chunk = event.chunk
            if event.status in TERMINAL_STATUSES:
                yield event
                return
            if chunk is None or (chunk.run, chunk.seq) in seen:
                continue
            seen.add((chunk.run, chunk.seq))
            if run is not None and chunk.run != run:
                yield StreamRestart(chunk.run)
            run = chunk.run
            if chunk.text:
                yield chunk.text

    @property
    def job_id(self) -> str:
        """The job's id (its Kafka key)."""
        return self.job.job_id

    async def result(self, timeout: float | None = 30.0) -> Result:
        """Wait for this job's result; raises TimeoutError naming the job when none arrives in time."""
        self._watch()
        try:
            result, self.received_at = await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError:
            self._forget()
            raise TimeoutError(
                f"no result for job {self.job_id} within {timeout}s: is the {self.job.model} service running?"
            ) from None
        return result

    @property
    def latency_ms(self) -> float | None:
        """Publish → result receipt, in milliseconds (None until the result is in)."""
        return None if self.received_at is None else (self.received_at - self.sent_at) * 1000

    def _watch(self) -> None:
        if self._listener is not None and not self._future.done():
            self._listener.watch(self.job_id, self._future, self._progress)

    def _forget(self) -> None:
        if self._listener is not None:
            self._listener.forget(self.job_id, self._future)


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

    async def __aenter__(self) -> AiaasClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect the producer; raises BrokerUnavailable with what to do when Kafka is not there."""
        producer = AIOKafkaProducer(
            **self.kafka.connection_kwargs(), acks="all", enable_idempotence=True, linger_ms=2,
            max_request_size=self.kafka.max_batch_bytes,
        )
        try:
            await producer.start()
        except KafkaConnectionError as exc:
            await producer.stop()
            raise await explain_connection_failure(self.kafka, exc) from exc
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
        messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        generation: GenerationParams | Mapping[str, Any] | None = None,
    ) -> JobHandle:
        """Publish one inference job; returns once the broker has it. Await `.result()` for the outcome.

        `messages` (a chat) and `generation` (max_tokens, temperature, top_p, top_k, seed, stop) are for generative
        model types (`llm`): follow its answer with `handle.stream()`.

        `tenant` (default: the `AIAAS_KAFKA_TENANT` setting) publishes to that tenant's infer topic; the service
        takes the tenant from the topic, and Kafka ACLs decide who may write there. `priority` (-100 to 100) decides
        which waiting jobs run first; above 0 the job goes to the urgent lane, fetched before the infer topic.
        """
        now = time.time()
        job = Job(
            model=model, inputs=dict(inputs), task=task, model_version=version, priority=priority,
            deadline=now + deadline_s if deadline_s else None, reply_to=reply_to, tenant=tenant or self.kafka.tenant,
            attributes=dict(attributes or {}), created_at=now, job_id=job_id or new_job_id(),
            messages=[m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages] if messages else None,
            generation=(generation if isinstance(generation, GenerationParams) or generation is None
                        else GenerationParams(**generation)),
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
        """Publish a training job to `<prefix>.<model>.train` (`.train.<tenant>` with `AIAAS_KAFKA_TENANT` set).

        `inputs` holds hyper-parameters (`epochs`, `learning_rate`, `batch_size`, `seed`), the data
        (inline columns, or `data_uri` + `data_sha256`) and `base_version`; all optional.
        Follow it with `handle.events()`; `await handle.result()` is its `succeeded`/`failed` event.
        """
        job = Job(kind="train", model=model, inputs=dict(inputs or {}), attributes=dict(attributes or {}),
                  job_id=job_id or new_job_id())
        return await self.submit_job(job)

    async def cancel(self, job: Job | str, *, model: str | None = None, tenant: str | None = None) -> None:
        """Ask the services of a streaming model type (`llm`) to end a job's generation now: its final result
        says `finish_reason` `cancelled` with the text so far. A job of a tenant is cancelled on that tenant's
        cancel topic (only the tenant itself may write there). Give a Job, or a job id with its `model`."""
        if isinstance(job, Job):
            job_id, model, tenant = job.job_id, job.model, job.tenant or tenant
        else:
            job_id = job
            if model is None:
                raise ValueError("cancel(job_id) needs the job's model type: cancel(job_id, model='llm')")
        tenant = tenant or self.kafka.tenant
        topics = ModelTopics.of(model, self.kafka.topic_prefix)
        topic = topics.tenant_cancel(tenant) if tenant else topics.cancel
        producer = self._require_producer()
        async with self._setup_lock:
            await self._ensure({topic})
        await producer.send_and_wait(topic, b"", key=job_id.encode())

    async def submit_job(self, job: Job) -> JobHandle:
        """Publish a ready-made Job envelope (to `.train` for a training job, `.infer` otherwise, `.infer-urgent` for
        one of priority > 0; the priority also travels in the `aiaas.priority` header, `contract/priority.py`).

        A job for a tenant goes to that tenant's topic (`.infer.<tenant>` / `.train.<tenant>`) and is answered on
        `.results.<tenant>`: an inference job's tenant is its `tenant`, a training job's its `tenant` or else the
        `AIAAS_KAFKA_TENANT` setting. The services take the tenant from the topic.
        """
        producer = self._require_producer()
        topics = ModelTopics.of(job.model, self.kafka.topic_prefix)
        tenant = job.tenant or (self.kafka.tenant if job.kind == "train" else None)
        if job.kind == "train":
            target = topics.tenant_train(tenant) if tenant else topics.train
        else:
            target = topics.job_topic(tenant, urgent=job.priority > 0)
        results_topic = job.reply_to or (topics.tenant_results(tenant) if tenant else topics.results)
        async with self._setup_lock:
            await self._ensure({target, results_topic})
            listener = await self._listener(results_topic)
        future, progress = listener.expect(job.job_id)  # before the send: the result may come back at once
        with self._tracer.start_as_current_span(
            f"send {target}", kind=SpanKind.PRODUCER,
            attributes=tracing.producer_attributes(target, job_id=job.job_id) | {tracing.MODEL: job.model},
        ) as span:
            sent_at = time.time()
            try:
                meta = await producer.send_and_wait(
                    target, encode(job), key=job.job_id.encode(),
                    headers=tracing.inject_headers() + priority_headers(job.priority),
                )
            except BaseException as exc:
                listener.forget(job.job_id, future)  # no handle will ever wait on it
                if isinstance(exc, KafkaError):
                    raise broker_unreachable(self.kafka, exc) from exc
                raise
            span.set_attribute("messaging.destination.partition.id", str(meta.partition))
            span.set_attribute("messaging.kafka.offset", meta.offset)
        return JobHandle(job, sent_at, meta.partition, meta.offset, future, progress, _listener=listener)

    async def results(self, model: str, *, from_beginning: bool = False, topic: str | None = None,
                      idle_timeout: float | None = None, group_id: str | None = None,
                      seen: MutableSet[str] | None = None) -> AsyncIterator[Result]:
        """Iterate over a model's results topic, each job id once (duplicates from redelivery dropped).

        Without `group_id`: starts at the end (new results only) unless `from_beginning`, and
        remembers nothing. With `group_id`: joins that consumer group and starts from its committed
        offsets (the beginning when it has none; `from_beginning` is not used), committing what it
        handed over every second and when the iteration ends, so a reader that is killed and
        started again resumes where it left off (results after its last commit come again).
        `seen` (e.g. a `SeenFile`) holds the job ids already processed: their results are skipped,
        and each final result's job id is added just before it is handed over, so with a durable
        set no result is handed over twice across restarts either.
        With `idle_timeout`, stops after that many seconds without a new result. Only committed
        results are read (read_committed), so an exactly-once service's aborted attempts never show.
        Partitions added to the topic while reading are read too, from their beginning (within
        seconds: the reader's metadata is refreshed every few). A record that is not a result (a body
        that does not decode, a job id that is not one, or one the Kafka client itself cannot parse)
        is logged with its coordinates and passed over: it never ends the iteration.
        """
        topics = ModelTopics.of(model, self.kafka.topic_prefix)
        topic = topic or (topics.tenant_results(self.kafka.tenant) if self.kafka.tenant else topics.results)
        await self._ensure({topic})
        done: dict[TopicPartition, int] = {}  # per partition: the offset after the last record handed over
        if group_id is None:
            reader = await _start_reader(self.kafka, topic, from_beginning=from_beginning)
        else:
            reader = await _start_group_reader(self.kafka, topic, group_id, done)
        consumer, dedupe = reader.consumer, _SeenIds()
        committed_at = active_at = time.monotonic()
        try:
            while True:
                if group_id is not None and done and time.monotonic() - committed_at >= _COMMIT_INTERVAL_S:
                    await _commit_done(consumer, done)
                    committed_at = time.monotonic()
                wait_s = 1.0 if idle_timeout is None else max(0.0, idle_timeout - (time.monotonic() - active_at))
                batches = await reader.getmany(timeout_ms=int(wait_s * 1000))
                if batches:
                    active_at = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - active_at >= idle_timeout:
                    return
                for tp, records in batches.items():
                    for record in records:
                        result = _receive(self._tracer, record, self.kafka.max_message_bytes)
                        done[tp] = record.offset + 1  # before the yield: a reader closed there has handled it
                        if result is None or (seen is not None and result.job_id in seen):
                            continue
                        if dedupe.first_time(result):
                            if seen is not None and result.status in TERMINAL_STATUSES:
                                seen.add(result.job_id)
                            yield result
        finally:
            if group_id is not None:
                with contextlib.suppress(KafkaError, TimeoutError):
                    await asyncio.wait_for(_commit_done(consumer, done), 5)
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
                raise await explain_connection_failure(self.kafka, exc) from exc
            self._known_topics |= missing

    async def _listener(self, topic: str) -> _ResultListener:
        if topic not in self._listeners:
            self._listeners[topic] = await _ResultListener.start(self, topic)
        return self._listeners[topic]


def _receive(tracer: trace.Tracer, record: ConsumerRecord, max_bytes: int) -> Result | None:
    """Decode one result inside a CONSUMER span continuing the job's trace.

    Never raises: a record that is not a result (a body that does not decode, a job id that is not
    one) is logged with its coordinates and None is returned.
    """
    try:
        with tracer.start_as_current_span(
            f"process {record.topic}", context=_trace_context(record), kind=SpanKind.CONSUMER,
            attributes=tracing.consumer_attributes(record.topic, record.partition, record.offset),
        ) as span:
            result = decode_result(record.value or b"", max_bytes)
            if not isinstance(result.job_id, str) or not _JOB_ID.fullmatch(result.job_id):
                raise ValueError(f"its job id {result.job_id!r:.200} is not a job id")
            span.set_attribute(tracing.JOB_ID, result.job_id)
            span.set_attribute(tracing.STATUS, result.status)
            return result
    except Exception as exc:  # noqa: BLE001 - one bad record must not stop a reader; it is reported here
        _log_skipped(record, exc)
        return None


def _trace_context(record: ConsumerRecord) -> Context:
    """The trace context the record carries; an empty one when its headers hold none that can be read."""
    try:
        return tracing.extract_context(record.headers)
    except Exception as exc:  # noqa: BLE001 - junk trace headers only cost the result its trace link
        log.debug("%s[%d] offset %d: unreadable trace context (%s)", record.topic, record.partition,
                  record.offset, exc)
        return Context()


def _log_skipped(record: ConsumerRecord, exc: BaseException) -> None:
    log.warning("skipped the record at %s[%d] offset %d: not a result this client can use (%s: %.300s)",
                record.topic, record.partition, record.offset, type(exc).__name__, exc)


class _Reader:
    """A client reader's consumer, fetched so that no single record can stop it.

    * aiokafka raises out of `getmany` on a record it cannot parse (a header key that is not UTF-8,
      a corrupt batch) and stays before it, so a plain loop would fail on it for ever. The reader
      steps up to it one record at a time, logs its coordinates, seeks past it and goes on. The
      failed `getmany` has also moved past the records it took from other partitions before it
      failed, without returning them: the reader moves those back first.
    * A group-less reader (`follow=True`) follows partitions added to its topic: aiokafka's `assign`
      is fixed, so it re-assigns with the new ones (read from their beginning: everything on them is
      new), carrying the positions of the others over. A group reader's coordinator does that itself.
    """

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, *, follow: bool,
                 positions: dict[TopicPartition, int] | None = None,
                 follow_every_s: float = _FOLLOW_INTERVAL_S) -> None:
        self.consumer, self.topic, self._follow, self._follow_every_s = consumer, topic, follow, follow_every_s
        self.positions = positions if positions is not None else {}
        """Per partition: the offset after the last record `getmany` returned (a group reader drops the
        partitions it gives up)."""
        self._followed_at = time.monotonic()

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records of the topic, as `AIOKafkaConsumer.getmany`, minus the ones aiokafka cannot parse."""
        if self._follow and time.monotonic() - self._followed_at >= self._follow_every_s:
            await self._follow_new_partitions()
        try:
            fetched = await self.consumer.getmany(timeout_ms=timeout_ms)
        except _UNPARSEABLE as exc:
            fetched = await self._pass_unparseable(exc)
        for tp, records in fetched.items():
            if records:
                self.positions[tp] = records[-1].offset + 1
        return fetched

    async def _follow_new_partitions(self) -> None:
        self._followed_at = time.monotonic()
        owned = self.consumer.assignment()
        new = {TopicPartition(self.topic, p) for p in self.consumer.partitions_for_topic(self.topic) or ()} - owned
        if not new:
            return
        at = {tp: await self.consumer.position(tp) for tp in owned}
        self.consumer.assign(sorted(owned | new))  # resets every position: put the others back
        for tp, offset in at.items():
            self.consumer.seek(tp, offset)
        await self.consumer.seek_to_beginning(*new)
        for tp in new:
            self.positions[tp] = await self.consumer.position(tp)
        log.info("reading %s: %d new partition(s) %s, from their beginning", self.topic, len(new),
                 sorted(tp.partition for tp in new))

    async def _pass_unparseable(self, exc: BaseException) -> dict[TopicPartition, list[ConsumerRecord]]:
        log.warning("reading %s: the Kafka client cannot parse a record (%s: %.300s); looking for it",
                    self.topic, type(exc).__name__, exc)
        owned = sorted(self.consumer.assignment())
        for tp in owned:
            if tp in self.positions:
                self.consumer.seek(tp, self.positions[tp])
            else:  # a group reader's partition it has returned nothing from yet: where the group left it
                committed = await self.consumer.seek_to_committed(tp)
                if not committed.get(tp):
                    await self.consumer.seek_to_beginning(tp)
        fetched = {}
        for tp in owned:
            records = await self._step_through(tp)
            if records:
                fetched[tp] = records
        return fetched

    async def _step_through(self, tp: TopicPartition) -> list[ConsumerRecord]:
        """Up to `_PROBE_MAX_RECORDS` of `tp`'s records, one fetch each, seeking past any it cannot parse."""
        records: list[ConsumerRecord] = []
        for _ in range(_PROBE_MAX_RECORDS):
            end = self.consumer.last_stable_offset(tp)
            if end is not None and await self.consumer.position(tp) >= end:
                break  # nothing more to read there now: do not wait for it
            try:
                got = await self.consumer.getmany(tp, timeout_ms=_PROBE_TIMEOUT_MS, max_records=1)
            except _UNPARSEABLE as exc:
                offset = await self.consumer.position(tp)
                log.warning("skipped the record at %s[%d] offset %d: the Kafka client cannot parse it (%s: %.300s)",
                            tp.topic, tp.partition, offset, type(exc).__name__, exc)
                self.consumer.seek(tp, offset + 1)
                self.positions[tp] = offset + 1
                continue
            if not got:
                break
            records.extend(got[tp])
        return records


def _reader_consumer(kafka: KafkaSettings, **options: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(**kafka.connection_kwargs(), enable_auto_commit=False, isolation_level="read_committed",
                            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
                            max_partition_fetch_bytes=kafka.max_batch_bytes, **options)


async def _start_reader(kafka: KafkaSettings, topic: str, *, from_beginning: bool = False,
                        positions: Mapping[TopicPartition, int] | None = None) -> _Reader:
    """A group-less reader of every partition of `topic`, positioned before it returns.

    At the end of each partition (the beginning with `from_beginning`); with `positions`, at those,
    and at the beginning of any partition they do not name (one added since they were taken).
    """
    consumer = _reader_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        # The consumer's metadata may predate a topic created a moment ago: ask the cluster itself.
        partitions = consumer.partitions_for_topic(topic) or range(await partition_count(kafka, topic, wait_s=5))
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if positions is not None:
            for tp in assigned:
                if tp in positions:
                    consumer.seek(tp, positions[tp])
            if unknown := [tp for tp in assigned if tp not in positions]:
                await consumer.seek_to_beginning(*unknown)
        elif from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        # Pin the positions now, so nothing published after this call is missed.
        pinned = {tp: await consumer.position(tp) for tp in assigned}
    except BaseException:
        await consumer.stop()
        raise
    return _Reader(consumer, topic, follow=True, positions=pinned)


async def _start_group_reader(kafka: KafkaSettings, topic: str, group_id: str,
                              done: dict[TopicPartition, int]) -> _Reader:
    """A member of consumer group `group_id` on `topic`: from its committed offsets, the earliest where none.

    Partitions added to the topic reach the group at the next metadata refresh: its coordinator
    rebalances, and a new partition, having no committed offset, is read from its beginning.
    """
    consumer = _reader_consumer(kafka, group_id=group_id, auto_offset_reset="earliest")
    positions: dict[TopicPartition, int] = {}
    consumer.subscribe([topic], listener=_CommitOnRevoke(consumer, done, positions))
    await consumer.start()
    return _Reader(consumer, topic, follow=False, positions=positions)


async def _commit_done(consumer: AIOKafkaConsumer, done: dict[TopicPartition, int]) -> None:
    """Commit the offsets of what was handed over, on the partitions this member still owns.

    A failed commit (the group rebalanced meanwhile) is only logged: the partition's next owner
    starts from the last commit that succeeded, and hands those results over again (at least once;
    a `seen` set drops them).
    """
    owned = consumer.assignment()
    offsets = {tp: offset for tp, offset in done.items() if tp in owned}
    for tp in set(done) - owned:
        del done[tp]
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        log.warning("committing the results reader's offsets failed (%s); they will be read again", exc)
        return
    for tp, offset in offsets.items():
        if done.get(tp) == offset:
            del done[tp]


class _CommitOnRevoke(ConsumerRebalanceListener):
    """Before partitions move to another reader of the group, commit what was handed over from them."""

    def __init__(self, consumer: AIOKafkaConsumer, done: dict[TopicPartition, int],
                 positions: dict[TopicPartition, int]) -> None:
        self._consumer, self._done, self._positions = consumer, done, positions

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await _commit_done(self._consumer, self._done)
        for tp in revoked:  # another member moves on with them; if they come back, it is from its commits
            self._positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


_OpenReader = Callable[[Mapping[TopicPartition, int] | None], Awaitable[_Reader]]


@dataclass(eq=False)
class _Waiter:
    """One handle's wait for a job's result: its future, and its queue of progress events."""

    future: asyncio.Future[tuple[Result, float]]
    progress: asyncio.Queue[Result]


class _ResultListener:
    """Reads one results topic from 'now' and completes the futures of jobs this client sent.

    No record stops it: one it cannot use is logged and passed over. Any other error is logged and
    the listener starts a fresh consumer after a backoff, from the positions it had reached, while
    the handles keep waiting. It keeps only the job ids some handle is waiting for.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, open_reader: _OpenReader | None = None) -> None:
        """`open_reader(positions)` starts a reader of `topic` at `positions` (None: at its end); the default
        is `_start_reader`'s group-less consumer."""
        self._tracer = trace.get_tracer(tracing.TRACER_NAME)
        self._max_bytes = kafka.max_message_bytes
        self._topic = topic
        self._open = open_reader or (lambda positions: _start_reader(kafka, topic, positions=positions))
        self._reader: _Reader | None = None
        self._positions: Mapping[TopicPartition, int] | None = None
        self._waiting: dict[str, list[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0
        """How many times the listener has started a fresh consumer after an error."""

    @classmethod
    async def start(cls, client: AiaasClient, topic: str) -> _ResultListener:
        """A listener reading `topic` from its end: positioned before this returns, so no result is missed."""
        listener = cls(client.kafka, topic)
        await listener.open()
        return listener

    async def open(self) -> None:
        """Position the first consumer and start reading."""
        self._reader = await self._open(None)
        self._task = asyncio.create_task(self._run(), name=f"aiaas result listener {self._topic}")

    def expect(self, job_id: str) -> tuple[asyncio.Future[tuple[Result, float]], asyncio.Queue[Result]]:
        """A new future (and progress queue) completed by `job_id`'s final result."""
        future: asyncio.Future[tuple[Result, float]] = asyncio.get_running_loop().create_future()
        progress: asyncio.Queue[Result] = asyncio.Queue()
        self.watch(job_id, future, progress)
        return future, progress

    def watch(self, job_id: str, future: asyncio.Future[tuple[Result, float]], progress: asyncio.Queue[Result]) -> None:
        """Complete `future` with `job_id`'s final result (again after a `forget`; once per future)."""
        waiters = self._waiting.setdefault(job_id, [])
        if all(w.future is not future for w in waiters):
            waiters.append(_Waiter(future, progress))

    def forget(self, job_id: str, future: asyncio.Future[tuple[Result, float]]) -> None:
        """Stop watching for `future` (a handle that timed out); the job id is dropped with its last waiter."""
        waiters = [w for w in self._waiting.get(job_id, ()) if w.future is not future]
        if waiters:
            self._waiting[job_id] = waiters
        else:
            self._waiting.pop(job_id, None)

    @property
    def waiting(self) -> int:
        """How many job ids some handle is waiting for."""
        return len(self._waiting)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._reader is None:
                    self._reader = await self._open(self._positions)
                batches = await self._reader.getmany(timeout_ms=1000)
            except Exception as exc:  # noqa: BLE001 - logged; the listener must outlive any error
                failures += 1
                delay = min(_RESTART_BACKOFF_S[0] * 2 ** (failures - 1), _RESTART_BACKOFF_S[1])
                log.error("the result listener on %s failed (%s: %s); restarting in %.1f s, %d job(s) waiting",
                          self._topic, type(exc).__name__, exc, delay, len(self._waiting), exc_info=exc)
                await self._close_reader()
                await asyncio.sleep(delay)
                self.restarts += 1
                continue
            failures = 0
            for records in batches.values():
                for record in records:
                    self._deliver(record)

    def _deliver(self, record: ConsumerRecord) -> None:
        """Hand one record to the handles waiting for it; never raises."""
        try:
            self._complete(record)
        except Exception as exc:  # noqa: BLE001 - one record must not stop the listener
            _log_skipped(record, exc)

    def _complete(self, record: ConsumerRecord) -> None:
        key = record.key.decode(errors="replace") if isinstance(record.key, bytes) else None
        if key not in self._waiting:
            return  # someone else's job, a duplicate of one already answered, or a key no job id has
        result = _receive(self._tracer, record, self._max_bytes)
        if result is None or result.job_id not in self._waiting:
            return
        if result.status not in TERMINAL_STATUSES:
            for waiter in self._waiting[result.job_id]:
                waiter.progress.put_nowait(result)
            return
        received_at = time.time()
        for waiter in self._waiting.pop(result.job_id):
            if not waiter.future.done():
                waiter.future.set_result((result, received_at))

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        self._positions = dict(reader.positions)  # what was delivered: the next consumer starts there
        with contextlib.suppress(Exception):
            await reader.consumer.stop()

    async def stop(self) -> None:
        """Stop reading (waiting handles are not completed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_reader()
