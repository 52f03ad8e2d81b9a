"""A model type's service process: a Kafka consumer and producer around the worker core.

Each model package calls `run_service(...)` from its `__main__`. The service creates its
topics, joins its consumer group on `<prefix>.<model>.infer` and `.retry`, and runs a
`JobPipeline` (fetch → batch → model → publish → commit, with bounded in-flight work and
paused partitions when it is full). Results, retries and dead letters go out through an
idempotent `acks=all` producer — a transactional one in exactly-once mode (`kafka/transactions.py`).
Before it is ready it remembers the outcomes at the tail of its results topic, so a job id
seen again is answered with the outcome it already had (`idempotency.py`).
SIGTERM or SIGINT stops fetching, drains in-flight work, commits, and leaves the group.
The service also follows `<prefix>.models`: when the alias it serves moves, the new version
is loaded in the background and takes over between two batches (`RuntimeSet`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaConnectionError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from aiaas import tracing
from aiaas.contract.headers import HeaderLimits, read_headers
from aiaas.contract.reply_topics import ReplyTopics
from aiaas.contract.topics import ModelTopics, dlq_topic, models_topic, service_topics
from aiaas.errors import BrokerUnavailable, InvalidHeaders, ServiceMisconfigured
from aiaas.kafka.admin import ensure_topics, list_topics
from aiaas.kafka.diagnostics import explain_connection_failure
from aiaas.kafka.fetcher import fetch_beside_prefetched
from aiaas.kafka.sink import KafkaSink
from aiaas.kafka.topic_catalog import KafkaTopicCatalog
from aiaas.kafka.transactions import Transactions, claim_transactional_id
from aiaas.registry.announce import ModelWatcher
from aiaas.registry.store import Registry
from aiaas.serving.cancels import CancelListener
from aiaas.serving.heap import settle_heap
from aiaas.serving.idempotency import OutcomeCache, seed_from_results
from aiaas.serving.monitor import ServiceMonitor
from aiaas.serving.pipeline import JobPipeline, PipelineStats
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.runtime import ModelRuntime, streams
from aiaas.serving.runtimes import RuntimeSet
from aiaas.serving.task_dump import log_pending_tasks
from aiaas.serving.worker import BatchWorker
from aiaas.settings import HomeSettings, KafkaSettings, WorkerSettings
from aiaas.tracing.setup import setup_tracing

__all__ = ["ModelService", "run_service"]

log = logging.getLogger("aiaas.service")

_STOP_REPORT_AFTER_S = 15.0
"""A service still running this long past its drain budget after a stop logs where each of its tasks waits."""
_TOPIC_DISCOVERY_MS = 10_000
"""How often the consumer refreshes its metadata, so a tenant's infer topic created now is consumed this soon."""

_PARTITION_FETCH_BYTES = 1024 * 1024
"""Most bytes one fetch response brings of one partition (Kafka's own default). A response is decoded in one turn of
the event loop, so a flood's multi-megabyte fetches held every other job's fetch, batch and acknowledgement behind
them (bench/results: the tenant flood). A job larger than this is still fetched: since fetch v3 the broker returns
the first record batch of a response whole, whatever its size, and returns a partition whose next batch does not fit
empty (no error, nothing skipped), so it comes whole once no partition ahead of it in a request has data
(`tests/integration/test_vision_end_to_end.py`)."""

_FETCHER_WAKE_MS = 10
"""The longest aiokafka's fetch routine sleeps when it has nothing to send (its default: 200 ms). During a tenant
flood the routine was seen sending no fetch for a whole 200 ms sleep while another tenant's records waited at the
broker (bench/results: the tenant flood); each wake-up costs a pass over the assigned partitions, no request."""

_PRODUCER_BATCH_BYTES = 256 * 1024
"""A batch's results to one partition go out as one record batch (`KafkaSink.send_many`) up to this size;
aiokafka's default (16 KiB) would split a batch of text embeddings into many requests."""


class ModelService:
    """Wires one model type's runtimes to its topics: `.infer` in, `.results` and `.dlq` out, `.models` followed."""

    def __init__(self, runtime: ModelRuntime | RuntimeSet, kafka: KafkaSettings, worker: WorkerSettings,
                 monitor: ServiceMonitor | None = None) -> None:
        self.runtimes = runtime if isinstance(runtime, RuntimeSet) else RuntimeSet(runtime)
        self.runtime = self.runtimes.current
        self.kafka = kafka
        self.settings = worker
        self.topics = ModelTopics.of(runtime.model, kafka.topic_prefix)
        self.group = worker.group_id or f"{kafka.topic_prefix}.{runtime.model}"
        self._pipeline: JobPipeline | None = None
        self._stop_requested = False
        self._stop_report: asyncio.TimerHandle | None = None
        """Set by `stop()`: logs where each task waits if the service is still running past its drain budget."""
        self._tracer = trace.get_tracer(tracing.TRACER_NAME)
        self.monitor = monitor

    def stop(self) -> None:
        """Ask a running service to drain and exit (what SIGTERM does)."""
        if not self._stop_requested:
            log.info("%s service stopping: draining what it has taken, then leaving its group", self.runtime.model)
            with contextlib.suppress(RuntimeError):  # no running loop: a stop from outside it has no one to report
                late = self.settings.graceful_timeout_s + _STOP_REPORT_AFTER_S
                why = f"{self.runtime.model} service: not stopped {late:g} s after the stop"
                self._stop_report = asyncio.get_running_loop().call_later(late, log_pending_tasks, log, why)
        self._stop_requested = True
        if self.monitor is not None:
            self.monitor.health.stopping()
        if self._pipeline is not None:
            self._pipeline.stop()

    async def run(self) -> PipelineStats:
        """Create topics, join the group, serve until `stop()`, then drain, commit and leave."""
        streaming = streams(self.runtime)
        try:
            created = await ensure_topics(self.kafka, service_topics(self.runtime.model, self.kafka)
                                          + ([self.topics.cancel] if streaming else []))
        except KafkaConnectionError as exc:  # say why: unreachable, or credentials / TLS refused
            raise await explain_connection_failure(self.kafka, exc) from exc
        if created:
            log.info("created topics %s", ", ".join(created))
        exactly_once = self.settings.delivery == "exactly-once"
        # Held until the process ends (released in `finally`): no other replica on this host takes the same id.
        claim = claim_transactional_id(
            self.group, self.settings.instance_id, cluster=self.kafka.bootstrap_servers,
            numbered="instance_id" not in self.settings.model_fields_set,
        ) if exactly_once else None
        txn_id = claim.id if claim is not None else None
        producer = AIOKafkaProducer(
            **self.kafka.connection_kwargs(), client_id=f"aiaas-{self.runtime.model}", acks="all",
            enable_idempotence=True, linger_ms=1, max_request_size=self.kafka.max_batch_bytes,
            max_batch_size=min(_PRODUCER_BATCH_BYTES, self.kafka.max_message_bytes),
            transactional_id=txn_id,
        )
        consumer = AIOKafkaConsumer(
            **self.kafka.connection_kwargs(), client_id=f"aiaas-{self.runtime.model}", group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
            max_partition_fetch_bytes=_PARTITION_FETCH_BYTES, consumer_timeout_ms=_FETCHER_WAKE_MS,
            # A revocation drains in-flight work (up to graceful_timeout_s); the rebalance must wait for it,
            # or the group moves on without us and our commits fail (a rebalance storm).
            rebalance_timeout_ms=int(self.settings.graceful_timeout_s * 1000) + 5000,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            # The subscription is a pattern (every tenant's infer topic): a new tenant's topic is found this soon.
            metadata_max_age_ms=_TOPIC_DISCOVERY_MS,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await producer.start()  # in exactly-once mode this fences an earlier producer with our transactional id
        # A transactional producer sends nothing outside a transaction: chunks (progress) take a plain one.
        chunk_producer = AIOKafkaProducer(
            **self.kafka.connection_kwargs(), client_id=f"aiaas-{self.runtime.model}-chunks", acks="all",
            enable_idempotence=True, linger_ms=1, max_request_size=self.kafka.max_batch_bytes,
        ) if streaming and exactly_once else None
        if chunk_producer is not None:
            await chunk_producer.start()
        watcher = ModelWatcher(self.kafka, self.runtime.model)
        following: asyncio.Task[None] | None = None
        sampling: asyncio.Task[None] | None = None
        cancels: CancelListener | None = None
        outcomes = OutcomeCache(self.settings.idempotency_window, self.settings.outcome_memory_bytes)
        remembered = 0
        retry = RetryPolicy(self.settings.max_attempts, self.settings.retry_backoff_ms / 1000,
                            self.settings.retry_backoff_max_ms / 1000)
        worker = BatchWorker(
            self.runtimes, KafkaSink(producer), topics=self.topics, dlq_topic=dlq_topic(self.kafka.topic_prefix),
            group=self.group, max_message_bytes=self.kafka.max_message_bytes, outcomes=outcomes, retry=retry,
            model_instances=self.settings.model_instances, model_calls=self.settings.model_calls,
            header_limits=HeaderLimits.configured(),
            reply_topics=ReplyTopics(self.topics, self.kafka.topic_prefix, self.settings.reply_to_pattern),
            topic_catalog=KafkaTopicCatalog(producer),
            chunk_sink=KafkaSink(chunk_producer) if chunk_producer is not None else None,
            metrics=self.monitor.metrics if self.monitor is not None else None,
        )
        pipeline = JobPipeline(
            worker, consumer, max_batch=self.settings.max_batch, max_wait_ms=self.settings.max_wait_ms,
            max_in_flight=self.settings.in_flight_bound(), max_in_flight_bytes=self.settings.max_in_flight_bytes,
            latency_budget_ms=None if streaming else self.settings.latency_budget_ms,
            drain_timeout_s=self.settings.graceful_timeout_s,
            due_at=retry.due_at, delayed_topic=self.topics.retry,
            transactions=Transactions(producer, self.group) if exactly_once else None,
            model_instances=self.settings.model_instances,
            tenant_of=self._owner_of, max_in_flight_per_tenant=self.settings.max_in_flight_per_tenant,
            # Heartbeats run on the event loop: one that stood still this long sent none, and may be out of the group.
            stall_after_s=max(1.0, (self.settings.session_timeout_ms - self.settings.heartbeat_interval_ms) / 1000),
            rejoin=lambda: self._resubscribe(consumer, pipeline),
            publish_in_cut_order=not streaming,
            is_urgent=self.topics.is_urgent,
            max_poll_interval_s=self.settings.max_poll_interval_ms / 1000,
            busy_fetch_wait_ms=0 if streaming else self.settings.busy_fetch_wait_ms,
            commit_interval_ms=self.settings.commit_interval_ms,
        )
        stats = pipeline.stats
        if self.monitor is not None:
            self.monitor.health.waiting_for("starting: reading the outcomes at the tail of the results topic")
        try:
            # After the producer started: in exactly-once mode that aborted a dead predecessor's open transaction.
            remembered = await self._remember_outcomes(outcomes)
            await watcher.start()  # before "ready": a promotion announced after that is never missed
            if streaming:
                cancels = CancelListener(self.kafka, self.topics, self.group, worker.cancel)
                await cancels.start()  # before "ready": a cancellation sent after that is seen
            following = asyncio.create_task(self._follow_registry(watcher), name="aiaas-follow-registry")
            self._resubscribe(consumer, pipeline, first=True)
            await consumer.start()
            fetch_beside_prefetched(consumer)  # its fetcher exists once started
            self._pipeline = pipeline
            if self.monitor is not None:
                sampling = asyncio.create_task(self.monitor.sample_forever(consumer, producer, pipeline,
                                                                           self.runtimes), name="aiaas-metrics")
            if self._stop_requested:
                pipeline.stop()
            log.info(
                "%s service ready: %s v%s (%s), consuming %s as group %s (max_batch %d, max_in_flight %d, %s%s, "
                "%d outcomes remembered)",
                self.runtime.model, self.runtime.model, self.runtime.version, self.runtimes.serve_ref,
                self.topics.infer, self.group, self.settings.max_batch, self.settings.in_flight_bound(),
                self.settings.delivery, f" as {txn_id}" if txn_id else "", remembered,
            )
            await pipeline.run()
        finally:
            log.info("%s service: closing its Kafka clients", self.runtime.model)
            for task in (following, sampling):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await watcher.stop()
            if cancels is not None:
                await cancels.stop()
            await consumer.stop()  # leaves the group, so its partitions move at once
            await producer.stop()
            if chunk_producer is not None:
                await chunk_producer.stop()
            if claim is not None:
                claim.release()
            worker.close()
            if self._stop_report is not None:  # stopped in time: nothing to report (the loop may live on)
                self._stop_report.cancel()
        log.info(
            "%s service stopped: %d jobs in %d batches, paused %d times, %d rewinds, %d failed commits, "
            "%d transactions (%d aborted), %d stalls past the group session, %d repeated job ids answered from memory",
            self.runtime.model, stats.jobs, stats.batches, stats.pauses, stats.rewinds, stats.commit_failures,
            stats.transactions, stats.aborted_transactions, stats.stalls, outcomes.hits,
        )
        return stats


    def _owner_of(self, topic: str) -> str | None:
        """Whose share of the in-flight window a record of `topic` counts against: its tenant (retries: their own)."""
        if topic == self.topics.retry:
            return "<retries>"  # not a tenant name: those have no "<"
        try:
            return self.topics.tenant_of(topic)
        except ValueError:
            return None

    def _resubscribe(self, consumer: AIOKafkaConsumer, pipeline: JobPipeline, *, first: bool = False) -> None:
        """Join the group (`first`), or leave it and join again as a new member: after a stall the pipeline must
        not take a record before the group has answered, and a new member's assignment starts from the committed
        offsets."""
        if not first:
            consumer.unsubscribe()
        consumer.subscribe(pattern=self._subscription(), listener=pipeline.rebalance_listener)

    def _subscription(self) -> str:
        """The infer topic, every tenant's infer topic, their urgent lanes and the retry topic, as one pattern."""
        return f"^(?:{self.topics.infer_pattern()}|{re.escape(self.topics.retry)})$"

    async def _remember_outcomes(self, outcomes: OutcomeCache) -> int:
        """Seed the outcome memory from the results topic and every tenant's (each under its tenant)."""
        remembered = await seed_from_results(outcomes, self.kafka, self.topics.results)
        existing = set(await list_topics(self.kafka))
        # A tenant is a tenant by a topic it publishes jobs to, not by a results-like name.
        tenants: set[str | None] = set()
        for topic in existing:
            if topic.startswith((self.topics.infer + ".", self.topics.urgent + ".")):
                with contextlib.suppress(ValueError):
                    tenants.add(self.topics.tenant_of(topic))
        for tenant in sorted(t for t in tenants if t):
            if (results := self.topics.tenant_results(tenant)) in existing:
                remembered += await seed_from_results(outcomes, self.kafka, results, tenant=tenant)
        return remembered

    async def _follow_registry(self, watcher: ModelWatcher) -> None:
        """Load the served alias's new version in the background whenever the registry announces a move."""
        while True:
            try:
                async for event, record in watcher.events():
                    log.info("registry: %s %s v%d (aliases %s)", event.model, event.action, event.version,
                             event.aliases)
                    # The reload continues the trace of whoever changed the registry (e.g. a training job).
                    with self._tracer.start_as_current_span(
                        f"process {record.topic}", context=_trace_context(record), kind=SpanKind.CONSUMER,
                        attributes=tracing.consumer_attributes(record.topic, record.partition, record.offset)
                        | {tracing.MODEL_VERSION: str(event.version)},
                    ):
                        await self.runtimes.follow(event.aliases)
            except asyncio.CancelledError:
                raise
            except Exception:  # the models topic is advisory: never let it stop the service
                log.exception("following %s failed; retrying in 5 s", models_topic(self.kafka.topic_prefix))
                await asyncio.sleep(5)


def _trace_context(record: ConsumerRecord) -> Context:
    """The trace context a registry event carries, when its headers pass the checks (else a trace of its own)."""
    try:
        return tracing.extract_context(read_headers(record.headers).trace_context())
    except InvalidHeaders:
        return tracing.extract_context(())


def run_service(model: str, load_runtime: Callable[[str], ModelRuntime], worker: WorkerSettings,
                registry: Registry) -> None:
    """Entry point body of a model service process: tracing, runtime, serve until SIGTERM/SIGINT.

    `load_runtime(ref)` loads a sha256-checked registry version or alias; the service calls it
    for `worker.model_version` at start and again, in the background, when that alias moves.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = setup_tracing(f"aiaas-{model}")
    monitor: ServiceMonitor | None = None
    try:
        # Before the model loads: a liveness probe is answered during a long load, and readiness says what it waits for.
        monitor = ServiceMonitor.open(model, worker, home=HomeSettings().home, instance=worker.instance_id)
        runtimes = RuntimeSet(load_runtime(worker.model_version), serve_ref=worker.model_version, load=load_runtime,
                              aliases=registry.aliases(model))
        settle_heap(worker.gc_young_threshold)
        asyncio.run(_serve(ModelService(runtimes, KafkaSettings(), worker, monitor)))
    except (BrokerUnavailable, ServiceMisconfigured) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    finally:
        if monitor is not None:
            monitor.close()
        provider.shutdown()


async def _serve(service: ModelService) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()
