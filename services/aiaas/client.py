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
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, MutableSet
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import tracing
from .codec import decode_result, encode
from .contracts import TERMINAL_STATUSES, InputValue, Job, Result, new_job_id
from .errors import AiaasError, BrokerUnavailable
from .settings import KafkaSettings
from .topics import ModelTopics, ensure_topics, partition_count

__all__ = ["AiaasClient", "JobHandle", "SeenFile", "broker_unreachable", "explain_connection_failure",
           "KafkaAuthenticationFailed"]

log = logging.getLogger("aiaas.client")

_COMMIT_INTERVAL_S = 1.0
"""How often a group reader (`results(group_id=...)`) commits the offsets of what it handed over."""


def broker_unreachable(settings: KafkaSettings, exc: BaseException) -> BrokerUnavailable:
    """The one-line error a person sees when Kafka does not answer."""
    return BrokerUnavailable(
        f"cannot reach Kafka at {settings.bootstrap_servers} ({type(exc).__name__}). "
        "Start the local broker with `infra/kafka/kafka.sh start` (or `make kafka`), "
        "or point AIAAS_KAFKA_BOOTSTRAP_SERVERS at your cluster."
    )


class KafkaAuthenticationFailed(BrokerUnavailable):
    """Kafka answered but refused this connection's security settings (SASL credentials or mechanism,
    TLS trust or client certificate); trying again with the same settings will not help."""

    retriable = False


async def explain_connection_failure(settings: KafkaSettings, exc: BaseException) -> BrokerUnavailable:
    """The error for a client that could not connect: `KafkaAuthenticationFailed` naming the setting to fix
    when a broker answered but refused the handshake, `broker_unreachable` otherwise.

    aiokafka only logs the broker's reason (wrong SCRAM password, unknown mechanism, untrusted certificate)
    and raises "Unable to bootstrap"; one connection attempt with the same settings recovers it.
    """
    from aiokafka.conn import collect_hosts, create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    kwargs = settings.connection_kwargs()
    for host, port, _ in collect_hosts(settings.bootstrap_servers, randomize=False):
        try:
            async with asyncio.timeout(5):
                conn = await create_conn(
                    host, port, request_timeout_ms=5000, security_protocol=settings.security_protocol,
                    ssl_context=kwargs.get("ssl_context"), sasl_mechanism=kwargs.get("sasl_mechanism"),
                    sasl_plain_username=kwargs.get("sasl_plain_username"),
                    sasl_plain_password=kwargs.get("sasl_plain_password"),
                )
                try:
                    await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
        except Exception as refusal:  # noqa: BLE001 - classified below; anything else is "unreachable"
            refused = _security_refusal(settings, f"{host}:{port}", refusal)
            if refused is not None:
                return refused
    return broker_unreachable(settings, exc)


def _security_refusal(settings: KafkaSettings, where: str, exc: Exception) -> KafkaAuthenticationFailed | None:
    import ssl

    from aiokafka import errors

    protocol, mechanism = settings.security_protocol, settings.sasl_mechanism or "PLAIN"
    said = f" (broker: {exc.args[0]})" if exc.args and isinstance(exc.args[0], str) and exc.args[0] else ""
    if isinstance(exc, (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError)):
        message = (f"Kafka rejected the SASL credentials for user '{settings.sasl_username}' ({mechanism}) at "
                   f"{where}: check AIAAS_KAFKA_SASL_USERNAME / AIAAS_KAFKA_SASL_PASSWORD{said}")
    elif isinstance(exc, errors.UnsupportedSaslMechanismError):
        message = (f"Kafka at {where} does not offer the SASL mechanism {mechanism} on that listener: "
                   "check AIAAS_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, as the cluster has it)")
    elif isinstance(exc, errors.IllegalSaslStateError):
        message = (f"Kafka at {where} does not speak SASL on that listener: check AIAAS_KAFKA_SECURITY_PROTOCOL "
                   f"({protocol}) and that AIAAS_KAFKA_BOOTSTRAP_SERVERS names the SASL listener's port")
    elif isinstance(exc, ssl.SSLCertVerificationError):
        message = (f"the TLS certificate of Kafka at {where} is not trusted ({exc.verify_message}): "
                   "set AIAAS_KAFKA_SSL_CAFILE to the CA (PEM) that signed it")
    elif isinstance(exc, ssl.SSLError):
        message = (f"the TLS handshake with Kafka at {where} failed ({exc.reason or exc}): check that this "
                   f"listener speaks TLS (AIAAS_KAFKA_SECURITY_PROTOCOL={protocol}) and the AIAAS_KAFKA_SSL_* files")
    elif isinstance(exc, ConnectionResetError) and protocol.endswith("SSL"):
        message = (f"Kafka at {where} reset the connection at the TLS handshake: that listener probably does not "
                   f"speak TLS (check AIAAS_KAFKA_SECURITY_PROTOCOL={protocol} and the port)")
    elif isinstance(exc, errors.KafkaConnectionError) and protocol.endswith("SSL") and not settings.ssl_certfile:
        # TLS connected, then the broker hung up: the usual reason is a listener that wants a client certificate.
        message = (f"Kafka at {where} closed the TLS connection: the listener may require a client certificate "
                   "(AIAAS_KAFKA_SSL_CERTFILE / AIAAS_KAFKA_SSL_KEYFILE)")
    elif isinstance(exc, errors.KafkaConnectionError) and protocol == "PLAINTEXT":
        # TCP connected, then the broker hung up on the first request: a listener that expects SASL or TLS.
        message = (f"Kafka at {where} accepted the connection and closed it: that listener probably needs SASL "
                   "or TLS (set AIAAS_KAFKA_SECURITY_PROTOCOL and the SASL/SSL settings, see the README)")
    else:
        return None
    return KafkaAuthenticationFailed(message)


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


class SeenFile(MutableSet[str]):
    """A durable set of job ids: an append-only file, one id a line, flushed on every `add`.

    The reader-side half of exactly-once processing. Pass it to `results(..., group_id=..., seen=...)`:
    the reader skips every job id already in it and adds each final result's job id just before
    handing the result over, so after a crash and restart (same group, same file) no result is
    handed over twice, even the ones whose offsets the crashed reader had not committed yet::

        seen = SeenFile("processed.ids")
        async for result in client.results("vision", group_id="billing", seen=seen):
            handle(result)

    A crash after the `add` and before `handle` finished skips that one result at the restart
    (at most once, for the result in hand). For exactly-once processing make the mark and the
    effect one durable step: give `seen` your own MutableSet over the store that `handle` writes
    to (`__contains__` asks that store, `add` does nothing) and record the job id in the same
    transaction as the effect.

    One process at a time per file. On load, an incomplete last line (a crash mid-write) is ignored
    and cut off. `fsync=True` also survives a power cut (an fsync per id: slower).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ids = self._load()
        self._file = self.path.open("a", encoding="utf-8", newline="\n")

    def _load(self) -> set[str]:
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        complete, newline, _ = data.rpartition(b"\n")
        if len(complete) + len(newline) < len(data):  # an id whose write was cut short: drop it
            with self.path.open("r+b") as file:
                file.truncate(len(complete) + len(newline))
        return {line for line in complete.decode("utf-8", errors="replace").split("\n") if line}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, job_id: str) -> None:
        """Record `job_id` (written and flushed before this returns); a no-op when it is already in."""
        if job_id in self._ids:
            return
        if not job_id or "\n" in job_id or "\r" in job_id:
            raise ValueError(f"a job id for SeenFile must be one non-empty line, not {job_id!r}")
        self._file.write(job_id + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._ids.add(job_id)

    def discard(self, job_id: str) -> None:
        """Forget `job_id` (rewrites the file: rare, unlike `add`)."""
        if job_id not in self._ids:
            return
        self._ids.discard(job_id)
        self._file.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{i}\n" for i in self._ids), encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8", newline="\n")

    def close(self) -> None:
        """Close the file (every `add` is already flushed)."""
        self._file.close()

    def __enter__(self) -> "SeenFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        """
        topic = topic or ModelTopics.of(model, self.kafka.topic_prefix).results
        await self._ensure({topic})
        done: dict[TopicPartition, int] = {}  # per partition: the offset after the last record handed over
        if group_id is None:
            consumer = await _start_reader(self.kafka, topic, from_beginning)
        else:
            consumer = await _start_group_reader(self.kafka, topic, group_id, done)
        dedupe = _SeenIds()
        committed_at = time.monotonic()
        try:
            while True:
                if group_id is not None and done and time.monotonic() - committed_at >= _COMMIT_INTERVAL_S:
                    await _commit_done(consumer, done)
                    committed_at = time.monotonic()
                batches = await consumer.getmany(timeout_ms=int((idle_timeout or 1.0) * 1000))
                if not batches and idle_timeout is not None:
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
                                isolation_level="read_committed",
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


async def _start_group_reader(kafka: KafkaSettings, topic: str, group_id: str,
                              done: dict[TopicPartition, int]) -> AIOKafkaConsumer:
    """A member of consumer group `group_id` on `topic`: from its committed offsets, the earliest where none."""
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=group_id, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024)
    consumer.subscribe([topic], listener=_CommitOnRevoke(consumer, done))
    await consumer.start()
    return consumer


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

    def __init__(self, consumer: AIOKafkaConsumer, done: dict[TopicPartition, int]) -> None:
        self._consumer, self._done = consumer, done

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await _commit_done(self._consumer, self._done)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


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
