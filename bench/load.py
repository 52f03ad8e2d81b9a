"""Load from the client side: bursts (saturated throughput) and open-loop arrivals (latency).

Two load generators with the same interface (`prepare` payloads, `send` one, await its `outcome`):

* `RawLoad` (default): job envelopes encoded before the clock starts (`aiaas.codec.encode`,
  each with its own W3C `traceparent` header, as a traced client sends them), published with a
  plain aiokafka producer with the client's settings (acks=all, idempotent, linger 2 ms);
  results read by key with a plain consumer and decoded (msgpack only) after the clock stops.
  It publishes tens of thousands of jobs/s here, so the consumer under test is the limit.
  `client="librdkafka"`: the same records published and read with librdkafka (`bench/rdkafka.py`).
* `ClientLoad`: the project's `aiaas.client.AiaasClient` (`submit`, then `JobHandle.result`;
  latency = `JobHandle.latency_ms`), tracing as the process has it. What a Python user gets —
  but on a small machine one client process tops out near the consumers' rates, so its
  figures are reported beside the consumer's, not instead of them.

* **Burst**: publish N jobs as fast as the generator can (`publish_all`) and await every
  result. Throughput = N / (last result received − first publish). The publish rate is
  reported too: close to the throughput means the generator was the limit.
* **Open loop**: job i is published at t0 + i/rate whatever happened to earlier jobs (no
  waiting for results; a late scheduler sends what is due at once). Latency per job =
  publish start → result received.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from aiaas.client.client import AiaasClient, JobHandle
from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job, new_job_id
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.admin import ensure_topics, partition_count
from aiaas.serving.heap import settle_heap
from aiaas.settings import KafkaSettings
from aiaas.tracing.hops import HopStats, SlowestJobs

from .rdkafka import CLIENTS, RdkafkaProducer
from .result_reader import result_status
from .workloads import Payload

__all__ = ["Burst", "Saturation", "OpenLoop", "Load", "RawLoad", "ClientLoad", "burst", "cycling",
           "open_loop", "over_rounds", "saturate", "burst_size", "percentiles", "collector_paused"]


# -- results ---------------------------------------------------------------------------------

@dataclass
class Burst:
    """One burst of N jobs."""

    jobs: int
    seconds: float
    publish_seconds: float
    mean_batch: float = float("nan")
    """Jobs in the model call that ran a job, averaged over jobs (`Result.timings.batch_size`; 0 if not reported)."""

    @property
    def jobs_per_s(self) -> float:
        """Jobs answered per second, publish of the first to receipt of the last."""
        return self.jobs / self.seconds

    @property
    def publish_per_s(self) -> float:
        """How fast the generator got the N jobs acknowledged by the broker."""
        return self.jobs / self.publish_seconds


@dataclass
class Saturation:
    """Repeated bursts against one consumer; the median is the figure."""

    bursts: list[Burst] = field(default_factory=list)

    def _median(self, value: Callable[[Burst], float]) -> float:
        return statistics.median(value(b) for b in self.bursts) if self.bursts else float("nan")

    @property
    def jobs_per_s(self) -> float:
        """Median throughput of the bursts."""
        return self._median(lambda b: b.jobs_per_s)

    @property
    def mean_batch(self) -> float:
        """Median of the bursts' mean batch sizes."""
        return self._median(lambda b: b.mean_batch)

    @property
    def publish_per_s(self) -> float:
        """Median publish rate of the bursts."""
        return self._median(lambda b: b.publish_per_s)

    def spread(self) -> str:
        """min–max of the bursts, for the details."""
        rates = [b.jobs_per_s for b in self.bursts]
        return f"{min(rates):,.0f}–{max(rates):,.0f}" if rates else "–"


@dataclass
class OpenLoop:
    """Latency at one offered rate."""

    share: float
    """Offered rate as a share of the measured saturated throughput."""
    target_per_s: float
    achieved_per_s: float
    jobs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_lag_ms: float
    """How far behind its schedule the publisher fell at worst."""
    mean_batch: float = float("nan")
    timeline: list[JobTimeline] = field(default_factory=list, repr=False)
    """Each job's trace ids and times as the load generator saw them (raw load only), for `bench/hop_breakdown.py`."""
    hops: dict[str, HopStats] = field(default_factory=dict)
    """Each hop's milliseconds, from the traces (filled by the caller)."""
    slowest: SlowestJobs | None = None
    """Where the slowest 1 % spent their time."""
    rounds: list[OpenLoop] = field(default_factory=list, repr=False)
    """The rounds this point is the median of (`over_rounds`); empty for a single run."""
    cores: dict[str, float] = field(default_factory=dict)
    """What ran on the cores while the jobs were published on their schedule (`cores` of `open_loop`: each named
    process's cores and the machine's busy ones); over rounds, each one's median. Empty where not measured."""

    @property
    def p99_range(self) -> tuple[float, float] | None:
        """The lowest and highest p99 of the rounds; None for a single run."""
        return (min(r.p99_ms for r in self.rounds), max(r.p99_ms for r in self.rounds)) if self.rounds else None


def over_rounds(rounds: Sequence[OpenLoop]) -> OpenLoop:
    """Several runs at one rate as one point: each percentile the median of the rounds' (a p99 of a few seconds'
    jobs is set by the worst stall in them, so one run's is a noisy sample), their jobs' timelines together."""
    if len(rounds) == 1:
        return rounds[0]

    def median(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in rounds))

    first = rounds[0]
    metered = set.intersection(*(set(r.cores) for r in rounds))
    return OpenLoop(first.share, first.target_per_s, median("achieved_per_s"), sum(r.jobs for r in rounds),
                    median("p50_ms"), median("p95_ms"), median("p99_ms"), max(r.max_lag_ms for r in rounds),
                    sum(r.mean_batch * r.jobs for r in rounds) / sum(r.jobs for r in rounds),
                    [j for r in rounds for j in r.timeline],
                    rounds=list(rounds),
                    cores={name: float(statistics.median(r.cores[name] for r in rounds)) for name in sorted(metered)})


@dataclass(frozen=True)
class JobTimeline:
    """One published job as the load generator saw it: the trace context it sent, when it published, when the
    broker acknowledged it, when its result arrived (epoch seconds)."""

    trace_id: str
    span_id: str
    sent_at: float
    acked_at: float
    received_at: float


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99."""
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 99])
    return float(p50), float(p95), float(p99)


# -- load generators -------------------------------------------------------------------------

@dataclass
class Outcome:
    """One job's end: when its result arrived, its status, the batch it ran in."""

    received_at: float
    status: str
    batch_size: int


class Sent(Protocol):
    """A published job.

    `acked()` and `outcome()` may return futures rather than coroutines: the open loop waits for thousands of jobs at
    once, and one task per job would hold the event loop (creating and running them) just as the last jobs of the
    schedule are in flight, and take a core from the service under test then."""

    sent_at: float

    def acked(self) -> Awaitable[None]:
        """Done once the broker has the job."""
        ...

    def outcome(self) -> Awaitable[Outcome | tuple[float, bytes]]:
        """The job's result: an `Outcome`, or (received at, result bytes) for `_decoded` to read."""
        ...


class Load(Protocol):
    """A load generator bound to one model type and one topic prefix."""

    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def prepare(self, payloads: Sequence[Payload]) -> list[Any]: ...
    async def send(self, prepared: Any) -> Sent: ...
    async def publish_all(self, prepared: Sequence[Any]) -> list[Sent]:
        """Publish all as fast as this generator can; return once the broker acknowledged every one."""
        ...


class _RawSent:
    __slots__ = ("sent_at", "acked_at", "trace", "_ack", "_result")

    def __init__(self, sent_at: float, ack: asyncio.Future, result: asyncio.Future, trace: tuple[str, str]) -> None:
        self.sent_at, self._ack, self._result, self.trace = sent_at, ack, result, trace
        self.acked_at = float("nan")
        ack.add_done_callback(self._acknowledged)

    def _acknowledged(self, _: asyncio.Future) -> None:
        self.acked_at = time.time()

    def acked(self) -> asyncio.Future:
        return self._ack

    def outcome(self) -> asyncio.Future:
        return self._result


def _decoded(received: Outcome | tuple[float, bytes]) -> Outcome:
    """An outcome from what a reader handed over: as it is when the reader process decoded it already."""
    if isinstance(received, Outcome):
        return received
    received_at, value = received
    return Outcome(received_at, *result_status(value))


class RawLoad:
    """Pre-encoded envelopes through a plain aiokafka producer; results matched by key.

    `reader="process"`: the results are read by a process of its own (`bench/result_reader.py`), so a result's
    receipt is not timed late while the publisher holds this process's event loop (the open-loop latency); by
    default they are read in this process's loop, as before.

    `client="librdkafka"`: published and read with librdkafka (`bench/rdkafka.py`; results in a process of their
    own). `bench/ab.py` meters what each costs per job (the same, on the 2-core VM: bench/results of 2026-12-07)."""

    send_returns_when_queued = True
    """`send` returns once the record is queued in the producer (it does not wait for the broker)."""

    def __init__(self, kafka: KafkaSettings, model: str, *, reader: str = "loop", client: str = "aiokafka") -> None:
        if client not in CLIENTS:
            raise ValueError(f"client is one of {', '.join(CLIENTS)}; got {client!r}")
        if client == "librdkafka" and reader != "process":
            raise ValueError("the librdkafka load generator reads its results in a process of its own: reader="
                             "'process'")
        self.kafka, self.model, self.reader, self.client = kafka, model, reader, client
        self.name = f"raw {client} producer"
        self.topics = ModelTopics.of(model, kafka.topic_prefix)
        self._pending: dict[bytes, asyncio.Future] = {}
        self._producer: AIOKafkaProducer | RdkafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task | None = None
        self._reader_process: ReaderProcess | None = None

    async def start(self) -> None:
        """Connect; the results reader is positioned at the end before this returns."""
        await ensure_topics(self.kafka, [self.topics.infer, self.topics.results])
        largest = self.kafka.max_message_bytes + 64 * 1024
        self._producer = (RdkafkaProducer(self.kafka, linger_ms=2, max_request_size=largest)
                          if self.client == "librdkafka" else
                          AIOKafkaProducer(**self.kafka.connection_kwargs(), acks="all", enable_idempotence=True,
                                           linger_ms=2, max_request_size=largest))
        await self._producer.start()
        if self.reader == "process":
            partitions = await partition_count(self.kafka, self.topics.results)
            self._reader_process = await ReaderProcess.start(self.kafka, self.topics.results, partitions,
                                                              self._resolve, client=self.client)
            return
        self._consumer = AIOKafkaConsumer(**self.kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                          max_partition_fetch_bytes=self.kafka.max_message_bytes + 64 * 1024)
        await self._consumer.start()
        partitions = [TopicPartition(self.topics.results, p)
                      for p in range(await partition_count(self.kafka, self.topics.results))]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    @property
    def reader_pid(self) -> int | None:
        """The results reader's process (`reader="process"`, once started); None when it reads in this one."""
        return self._reader_process.pid if self._reader_process is not None else None

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for record in records:
                    future = self._pending.pop(record.key, None)
                    if future is not None and not future.done():
                        future.set_result((now, record.value))

    def _resolve(self, received: list[tuple[bytes, float, str, int]]) -> None:
        """Results the reader process received (called in this loop, once per fetch of the reader)."""
        for key, at, status, batch_size in received:
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                future.set_result(Outcome(at, status, batch_size))

    async def stop(self) -> None:
        """Disconnect."""
        if self._reader_process is not None:
            await self._reader_process.stop()
            self._reader_process = None
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for client in (self._producer, self._consumer):
            if client is not None:
                await client.stop()

    def prepare(self, payloads: Sequence[Payload]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
        """(key, envelope bytes, headers) per payload: a fresh job id and trace context each."""
        prepared = []
        for p in payloads:
            job = Job(job_id=new_job_id(), model=self.model, task=p.task, inputs=dict(p.inputs))
            ids = os.urandom(24).hex()
            prepared.append((job.job_id.encode(), encode(job),
                             [("traceparent", f"00-{ids[:32]}-{ids[32:]}-01".encode())]))
        return prepared

    async def send(self, prepared: tuple[bytes, bytes, list[tuple[str, bytes]]]) -> _RawSent:
        """Publish (returns once queued in the producer; `acked()` waits for the broker)."""
        assert self._producer is not None
        key, value, headers = prepared
        result = asyncio.get_running_loop().create_future()
        self._pending[key] = result
        sent_at = time.time()
        ack = await self._producer.send(self.topics.infer, value, key=key, headers=headers)
        traceparent = headers[0][1]  # b"00-<trace id>-<span id>-01", as `prepare` wrote it
        return _RawSent(sent_at, ack, result, (traceparent[3:35].decode(), traceparent[36:52].decode()))

    async def publish_all(self, prepared: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> list[_RawSent]:
        """One send after the other (each only queues its record), then every acknowledgement.

        Not thousands of concurrent `send` calls: aiokafka's accumulator wakes every waiting sender
        whenever a batch drains, and that herd costs far more than the sends.
        """
        sent = [await self.send(item) for item in prepared]
        await asyncio.gather(*(s.acked() for s in sent))
        return sent


class ReaderProcess:
    """`bench/result_reader.py` in a process of its own; what it receives is handed to `deliver` in this loop."""

    def __init__(self, process: Any, stop_event: Any, connection: Connection, thread: threading.Thread) -> None:
        self._process, self._stop_event, self._connection, self._thread = process, stop_event, connection, thread

    @classmethod
    async def start(cls, kafka: KafkaSettings, topic: str, partitions: int,
                    deliver: Callable[[list[tuple[bytes, float, str, int]]], None],
                    client: str = "aiokafka") -> ReaderProcess:
        """Start it and return once it is positioned at the end of `topic`."""
        from .result_reader import read_results

        context = multiprocessing.get_context("spawn")  # not fork: this process runs an event loop and threads
        receiving, sending = context.Pipe(duplex=False)
        stop_event = context.Event()
        process = context.Process(target=read_results, args=(kafka, topic, partitions, sending, stop_event, client),
                                  daemon=True, name="results-reader")
        process.start()
        sending.close()
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, receiving.recv)
        if ready != "ready":
            raise RuntimeError(f"the results reader process said {ready!r}")

        def forward() -> None:
            while True:
                try:
                    received = receiving.recv()
                except (EOFError, OSError):
                    return
                loop.call_soon_threadsafe(deliver, received)

        thread = threading.Thread(target=forward, name="results-reader-pipe", daemon=True)
        thread.start()
        return cls(process, stop_event, receiving, thread)

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    async def stop(self) -> None:
        self._stop_event.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()
        await loop.run_in_executor(None, self._thread.join, 5)
        self._connection.close()


class _ClientSent:
    __slots__ = ("handle", "sent_at")

    def __init__(self, handle: JobHandle) -> None:
        self.handle, self.sent_at = handle, handle.sent_at

    async def acked(self) -> None:
        """`submit` returned: the broker has it."""

    async def outcome(self) -> Outcome:
        result = await self.handle.result(timeout=None)
        return Outcome(self.handle.received_at, result.status, result.timings.batch_size)


class ClientLoad:
    """The project's AiaasClient."""

    name = "AiaasClient"
    window = 64
    """`submit` awaits each acknowledgement, so submits run concurrently; with hundreds waiting at once
    aiokafka's producer spends its time waking them (measured here: ~40 % fewer jobs/s at 1000 than at 64)."""

    def __init__(self, kafka: KafkaSettings, model: str) -> None:
        self.kafka, self.model = kafka, model
        self.client = AiaasClient(kafka)

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    def prepare(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def send(self, prepared: Payload) -> _ClientSent:
        return _ClientSent(await self.client.submit(self.model, prepared.inputs, task=prepared.task))

    async def publish_all(self, prepared: Sequence[Payload]) -> list[_ClientSent]:
        """Up to `window` submits at once."""
        limit = asyncio.Semaphore(self.window)

        async def one(item: Payload) -> _ClientSent:
            async with limit:
                return await self.send(item)

        return list(await asyncio.gather(*(one(item) for item in prepared)))


# -- measurements ----------------------------------------------------------------------------

@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in this process while a measurement runs: one full collection first, what
    survives it frozen (`aiaas.serving.heap.settle_heap`, as the services do at start), and the collector off until
    the end.

    The load generator's process keeps each open-loop round's per-job timelines and each stage's records. A full
    collection walks all of them and holds the event loop meanwhile (timed with `gc.callbacks`: bench/results/,
    2026-12-07, the load generator's collections), and in the middle of an open-loop schedule the publisher then sent
    every job that had fallen due at once: an upstream that stops and then floods, not the steady arrivals the level
    claims. Jobs make few reference cycles; those left over are collected after the measurement. The freeze makes
    the next measurement's collection walk only what came since. What it froze stays frozen for the life of the
    process: a benchmark's, where what was alive at a measurement's start and later becomes cyclic garbage (a
    finished stage's clients, say) is not freed. Nested uses leave the collector as the outermost one found it;
    overlapping ones (two tasks at once) are not supported.
    """
    was_on = gc.isenabled()
    if was_on:
        settle_heap(0)
        gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


async def _outcomes(sent: Sequence[Sent], timeout: float) -> list[Outcome]:
    received = await asyncio.wait_for(asyncio.gather(*(s.outcome() for s in sent)), timeout)
    outcomes = [_decoded(r) for r in received]
    bad = [o for o in outcomes if o.status != "ok"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(outcomes)} jobs did not succeed (first: {bad[0].status})")
    return outcomes


async def burst(load: Load, payloads: Sequence[Payload], *, timeout: float = 180) -> Burst:
    """Publish every payload as fast as the generator can, await every result."""
    prepared = load.prepare(payloads)
    with collector_paused():
        started = time.time()
        sent = await load.publish_all(prepared)
        published = time.time()
        outcomes = await _outcomes(sent, timeout)
    finished = max(o.received_at for o in outcomes)
    return Burst(len(sent), finished - started, published - started, statistics.fmean(o.batch_size for o in outcomes))


def burst_size(rate: float, target_s: float, smallest: int = 100, largest: int = 200_000) -> int:
    """Jobs for a burst of about `target_s` seconds at `rate` jobs/s."""
    return int(min(max(rate * target_s, smallest), largest))


def cycling(pool: Sequence[Payload]) -> Callable[[int], list[Payload]]:
    """`take(n)`: the next n payloads of the pool, cycling."""
    cycle = itertools.cycle(pool)
    return lambda n: list(itertools.islice(cycle, n))


async def _burst(load: Load, payloads: Sequence[Payload]) -> Burst:
    """A burst against a consumer through Kafka, or a participant's own kind of burst (`RuntimeBursts`)."""
    own = getattr(load, "burst", None)
    if own is None:
        return await burst(load, payloads)
    with collector_paused():
        return await own(payloads)


async def saturate(loads: Sequence[Load], take: Callable[[int], list[Payload]], *, target_s: float, repeats: int,
                   pilot: int | Sequence[int], log: Callable[[str], None],
                   names: Sequence[str] | None = None) -> list[Saturation]:
    """Saturated throughput of one consumer per load generator, bursts alternating between them.

    A pilot burst per generator (`pilot` jobs, or one count per generator) warms its consumer up and
    sizes its bursts (N = its rate × `target_s`); then `repeats` rounds of one burst per generator,
    so every consumer is measured in the same minutes of the same machine (each round starts with the next
    generator, so none is always the one measured right after a given other). A round with a burst
    shorter than 75 % of `target_s` (the pilot underestimated a cold consumer) is discarded and
    that generator's bursts re-sized from it, at most three times.
    """
    names = list(names or [""] * len(loads))
    pilots = [pilot] * len(loads) if isinstance(pilot, int) else list(pilot)
    sizes = [burst_size((await _burst(load, take(n))).jobs_per_s, target_s)
             for load, n in zip(loads, pilots, strict=True)]
    results = [Saturation() for _ in loads]
    resized = 0
    while len(results[0].bursts) < repeats:
        # Each round starts with the next consumer: a burst right after another's (its commits, its span export,
        # the broker's log work still running) is not always the same consumer's.
        first = len(results[0].bursts) % len(loads)
        order = list(range(first, len(loads))) + list(range(first))
        measured = {i: await _burst(loads[i], take(sizes[i])) for i in order}
        round_ = [measured[i] for i in range(len(loads))]
        for b, name in zip(round_, names, strict=True):
            log(f"    burst {b.jobs:,} jobs{name}: {b.jobs_per_s:,.0f} jobs/s in {b.seconds:.1f} s "
                f"(published at {b.publish_per_s:,.0f}/s)")
        if resized < 3 and min(b.seconds for b in round_) < 0.75 * target_s:
            resized += 1
            sizes = [burst_size(b.jobs_per_s, target_s) if b.seconds < 0.75 * target_s else n
                     for b, n in zip(round_, sizes, strict=True)]
            log(f"    (too short: discarded, bursts re-sized to {', '.join(f'{n:,}' for n in sizes)} jobs)")
            continue
        for sat, b in zip(results, round_, strict=True):
            sat.bursts.append(b)
    return results


_TICK_S = 0.001
"""The open loop's publisher wakes at most once a millisecond and then sends every job due by then, so above 1,000
jobs/s they leave in groups of about rate/1000 (which the producer's 2 ms linger puts into one request anyway); a
wake-up per job cost the machine's shared cores more than the sends. Below 1,000 jobs/s a job may leave up to 1 ms
after it was due, when the one before it did. Latency is timed from each job's own send."""


async def _publish_on_schedule(load: Load, prepared: Sequence[Any], rate: float,
                               burst: int) -> tuple[list[Sent], float]:
    """Send `prepared` at `rate` jobs/s, `burst` at a time, from 50 ms from now; the jobs sent and acknowledged,
    and how late the publisher was at worst past its tick (seconds)."""
    loop = asyncio.get_running_loop()
    queues_at_once = getattr(load, "send_returns_when_queued", False)
    tasks: list[asyncio.Task] = []
    sent: list[Sent] = []
    start = loop.time() + 0.05
    max_lag = 0.0
    i = 0
    next_tick = start
    while i < len(prepared):
        due_at = start + (i // burst) * burst / rate  # when job i's group is due
        delay = max(due_at, next_tick) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        max_lag = max(max_lag, now - due_at - _TICK_S)  # late past the tick it may wait by design (a busy loop, say)
        next_tick = now + _TICK_S
        # Every job due by now, in one go: one wake-up per tick, not one timer and one task per job (at a few
        # thousand jobs/s those cost the shared CPU as much as the consumer under test); job i's whole group at least.
        due = min(len(prepared), max((int((now - start) * rate / burst) + 1) * burst, (i // burst + 1) * burst))
        for item in prepared[i:due]:
            if queues_at_once:
                sent.append(await load.send(item))
            else:
                tasks.append(asyncio.create_task(load.send(item)))
        i = due
    sent += await asyncio.gather(*tasks)
    await asyncio.gather(*(s.acked() for s in sent))
    return sent, max_lag


async def open_loop(load: Load, payloads: Sequence[Payload], *, rate: float, share: float,
                    timeout: float = 180, burst: int = 1,
                    cores: Callable[[], Callable[[], dict[str, float]]] | None = None) -> OpenLoop:
    """Publish the payloads at `rate` jobs/s on a fixed schedule, `burst` jobs at a time (an upstream that publishes
    in groups; above 1,000 jobs/s the jobs due in each millisecond leave together anyway, `_TICK_S`); latency
    percentiles of all of them. `cores`: a meter (`bench.procs.core_meter`) started when the schedule starts and
    read when it ends, for the point's `cores`."""
    prepared = load.prepare(payloads)
    with collector_paused():
        since = cores() if cores is not None else None
        sent, max_lag = await _publish_on_schedule(load, prepared, rate, burst)
        used = since() if since is not None else {}
        outcomes = await _outcomes(sent, timeout)
    times = [s.sent_at for s in sent]
    span = max(times) - min(times)
    p50, p95, p99 = percentiles([(o.received_at - s.sent_at) * 1000 for s, o in zip(sent, outcomes, strict=True)])
    timeline = [JobTimeline(*s.trace, s.sent_at, s.acked_at, o.received_at)
                for s, o in zip(sent, outcomes, strict=True) if isinstance(s, _RawSent)]
    return OpenLoop(share, rate, (len(sent) - 1) / span if span > 0 else float("nan"), len(sent), p50, p95, p99,
                    max_lag * 1000, statistics.fmean(o.batch_size for o in outcomes), timeline, cores=used)
