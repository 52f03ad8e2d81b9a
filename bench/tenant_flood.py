"""Tenant flood: bob's latency alone, and while alice floods the vision service past its capacity.

    .venv/bin/python bench/tenant_flood.py [--runs 3] [--bob-rate 50] [--solo-s 20] [--flood-jobs 60000]
                                           [--flood-rate 0 | --flood-times-capacity X] [--flood-nice 0..19]
                                           [--pin] [--noop] [--port 29592] [--out FILE]

The issue's target: a second tenant's p99 stays within 3x of its solo p99 while a first tenant floods past the
service's capacity (the per-tenant share of the in-flight window and turn-taking batches, `pipeline.py`).
Each run has its own topic prefix and its own `python -m aiaas.vision` (defaults; trace export off, as in the
fault suite: `OTEL_TRACES_EXPORTER=none`), on a broker of this program's own (`infra/kafka/kafka.sh`):

1. **capacity**: after a warm-up job of each tenant, alice (her own process, `flood` below) publishes
   `--capacity-jobs` jobs as fast as she can to `<prefix>.vision.infer.alice` while bob is quiet; capacity = jobs /
   (first publish → the last of their results in `<prefix>.vision.results.alice`): what the service does for one
   tenant's burst.
2. **solo**: bob publishes to `<prefix>.vision.infer.bob` at `--bob-rate` jobs/s (open loop: job i at t0 + i/rate,
   whatever happened to earlier ones) for `--solo-s`. Latency per job = publish start → its result read from
   `<prefix>.vision.results.bob` (one clock: both in this process).
3. **flood**: bob goes on at the same rate while alice publishes `--flood-jobs` jobs as fast as her producer
   takes them (tens of thousands a second here: several times any capacity of the service), or at `--flood-rate`,
   or at `--flood-times-capacity` X times the capacity of step 1. Bob's jobs published from alice's first publish
   until her last result was written count as "during the flood"; alice's jobs / that time is the rate the service
   drained her backlog at, beside bob.

Where the processes run: on a deployment alice publishes from machines of her own; here her process takes CPU
from the service and the broker while it publishes (bench/results/). `--pin` puts the service on the machine's last
core and the broker, alice's process and bob on the others; with `--flood-nice 19` as well, the broker and bob come
before her publisher there.

Prints one table row per run, then the medians; `--out FILE` writes the table (Markdown) with the command.
`flood` is the subcommand alice's process runs: `bench/tenant_flood.py flood --topic T --prefix P --count N
[--rate R]` (Kafka settings from AIAAS_KAFKA_*), also used by the fault suite's tenant flood scenario.
bench/priority_flood.py reuses the parts (`Prober`, `Bench`, `run_benchmark`) with other topics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.contract.topics import ModelTopics, service_topics
from aiaas.kafka.admin import ensure_topics, partition_count
from aiaas.metrics.fleet import Scrape
from aiaas.settings import KafkaSettings
from bench.rdkafka import CLIENTS, producer_config
from bench.stops import Stops, scrape_service, stops_table, stops_title

__all__ = ["flood_job_ids", "flood", "flood_librdkafka", "percentile", "log", "Prober", "Bench", "common_options",
           "run_benchmark", "report_context", "flood_pace", "service_note", "write_report"]

TENANTS = ("alice", "bob")
FLOOD_CLIENT_ID = "alice-flood"  # her producer's client.id: what `--flood-quota` names on a broker without logins


def flood_job_ids(prefix: str, count: int) -> list[str]:
    """The job ids alice's `flood` publishes, in order (the fault suite checks every one has a result)."""
    return [f"{prefix}-{i:07d}" for i in range(count)]


def _images() -> list[Tensor]:
    from aiaas.vision.data import load_split

    return [Tensor.from_numpy(image[0]) for image in load_split().test_x]


def _flood_payloads(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    """(key, encoded job) of each of the flood's vision jobs."""
    images = _images()
    return [(job_id.encode(), encode(Job(job_id=job_id, model="vision", inputs={"image": images[i % len(images)]})))
            for i, job_id in enumerate(flood_job_ids(prefix, count))]


def _behind_schedule(start: float, i: int, rate: float) -> float:
    """Seconds to wait before job `i` of an open loop at `rate` jobs/s from `start` (monotonic); 0 at full speed
    (rate 0) and under a millisecond (a shorter sleep costs more than it paces: send now, the next ones catch up)."""
    delay = start + i / rate - time.monotonic() if rate else 0.0
    return delay if delay > 0.001 else 0.0


def _announce(count: int, topic: str, rate: float) -> None:
    print(f"alice flood ready: {count} jobs to {topic} at {'full speed' if not rate else f'{rate:,.0f}/s'}",
          flush=True)


async def flood(kafka: KafkaSettings, topic: str, prefix: str, count: int, rate: float) -> tuple[int, float, float]:
    """Publish `count` vision jobs to `topic`, at `rate` jobs/s (open loop; 0: as fast as the producer takes them),
    with aiokafka (the Kafka client the services and `aiaas` client use).

    Jobs are encoded before the clock starts. Returns (acknowledged, wall time of the first send, seconds).
    """
    payloads = _flood_payloads(prefix, count)
    producer = AIOKafkaProducer(**kafka.connection_kwargs(), client_id=FLOOD_CLIENT_ID, acks="all",
                                enable_idempotence=True, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        _announce(count, topic, rate)
        first_at, start, acks = time.time(), time.monotonic(), []
        for i, (key, value) in enumerate(payloads):
            if delay := _behind_schedule(start, i, rate):
                await asyncio.sleep(delay)
            acks.append(await producer.send(topic, value, key=key))
            if len(acks) >= 2000:  # bound what waits in memory; a failure raises here
                await asyncio.gather(*acks)
                acks.clear()
        await asyncio.gather(*acks)
        return count, first_at, time.monotonic() - start
    finally:
        await producer.stop()


def flood_librdkafka(kafka: KafkaSettings, topic: str, prefix: str, count: int,
                     rate: float) -> tuple[int, float, float]:
    """`flood` with librdkafka (confluent-kafka), the C client most publishers in the field run on (Java's aside): the
    same jobs, acks, idempotence and partitioner; it batches and writes the records in C rather than Python."""
    from confluent_kafka import KafkaException, Producer

    payloads = _flood_payloads(prefix, count)
    producer = Producer(producer_config(kafka, FLOOD_CLIENT_ID, linger_ms=5) | {"batch.size": 256 * 1024})
    producer.list_topics(topic, timeout=30)  # connected before the clock starts, as aiokafka's start() is
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    _announce(count, topic, rate)
    first_at, start = time.time(), time.monotonic()
    for i, (key, value) in enumerate(payloads):
        if delay := _behind_schedule(start, i, rate):
            time.sleep(delay)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:  # its queue is full: let it send, then try again
                producer.poll(0.01)
        producer.poll(0)
    if left := producer.flush(60):
        raise KafkaException(f"{left} of alice's jobs were not acknowledged within 60 s")
    if failures:
        raise KafkaException(f"{len(failures)} of alice's jobs failed: {failures[0]}")
    return count, first_at, time.monotonic() - start


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank on the sorted values; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


# -- the benchmark ---------------------------------------------------------------------------

def log(message: str) -> None:
    """Progress on stderr (stdout gets the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class RunResult:
    """One run's figures."""

    capacity: float = float("nan")
    flood_rate: float = float("nan")
    """Alice's publishing rate during the flood (achieved)."""
    alice_jobs: int = 0
    alice_publish_s: float = float("nan")
    flood_s: float = float("nan")
    """Alice's first publish → her last result written."""
    solo: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    parts: dict[str, tuple[list[float], list[float], list[float], list[float]]] = field(default_factory=dict)
    """Phase → bob's (latency, publish → acknowledgement seen by his client, publish → batch cut, model done → result
    read) in ms; the flood also split into alice publishing and the service draining her backlog after she stopped."""
    missing: int = 0
    """Bob's jobs without a result at the end."""
    failed_sends: int = 0
    """Bob's sends the broker refused or that failed (their jobs are among the missing)."""
    other_cores: float | None = None
    stops: dict[str, Stops | None] = field(default_factory=dict)
    """Phase ("alone", "during the flood") → the service's own stops then (None: its metrics could not be read)."""

    @property
    def ratio(self) -> float:
        """Bob's p99 during the flood / alone."""
        return percentile(self.during, 99) / percentile(self.solo, 99)


class Prober:
    """An open-loop publisher of vision jobs to `infer` (bob's, here) and its reader of `results`, in this process:
    send time and receipt time per job. Its job ids are `<prefix>-<name>-000000` …; `headers` go with every job,
    `job` holds more fields of each Job (a priority, a `reply_to`). Stopped on leaving `async with`."""

    def __init__(self, kafka: KafkaSettings, rate: float, name: str, infer: str, results: str, *,
                 headers: list[tuple[str, bytes]] | None = None, job: dict[str, object] | None = None) -> None:
        self.kafka, self.rate, self.name = kafka, rate, name
        self.infer, self.results = infer, results
        self.headers, self.job_fields = headers or None, job or {}
        self.sent: dict[str, float] = {}
        self.received: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        """Job id → when this client saw the broker's acknowledgement of it (wall clock)."""
        self.ack_failures = 0
        """Sends the broker refused or that failed."""
        self.timings: dict[str, tuple[float, float]] = {}
        """Job id → (ms from publish to the batch being cut, ms from the model call's end to the result read)."""
        self._images = _images()
        self._stop = asyncio.Event()
        self._go = asyncio.Event()
        self._go.set()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Prober:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.started:
            await self.stop()

    async def start(self) -> None:
        """Start reading the results topic (from its end) and publishing."""
        self._consumer = AIOKafkaConsumer(**self.kafka.connection_kwargs(), group_id=None, enable_auto_commit=False)
        await self._consumer.start()
        parts = [TopicPartition(self.results, p) for p in range(await partition_count(self.kafka, self.results,
                                                                                          wait_s=10))]
        self._consumer.assign(parts)
        await self._consumer.seek_to_end(*parts)
        for tp in parts:
            await self._consumer.position(tp)  # resolve the end now, before the first job is sent
        self._producer = AIOKafkaProducer(**self.kafka.connection_kwargs(), acks="all", enable_idempotence=True,
                                          linger_ms=0)
        await self._producer.start()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._publish())]

    @property
    def started(self) -> bool:
        """Publishing and reading (until `stop`)."""
        return bool(self._tasks)

    async def _read(self) -> None:
        while True:
            for records in (await self._consumer.getmany(timeout_ms=100)).values():
                now = time.time()
                for record in records:
                    job_id = record.key.decode(errors="replace") if record.key else ""
                    if job_id in self.received:
                        continue
                    self.received[job_id] = now
                    result = decode_result(record.value or b"", self.kafka.max_message_bytes)
                    if result.timings is not None and result.completed_at and job_id in self.sent:
                        # picked_at − created_at (the job was made just before its send), and completion → read here
                        self.timings[job_id] = (result.timings.queue_wait_ms, (now - result.completed_at) * 1000)

    def pause(self) -> None:
        """Stop publishing for now (the results reader goes on)."""
        self._go.clear()

    def resume(self) -> None:
        """Publish again, on a fresh schedule from now."""
        self._go.set()

    async def _publish(self) -> None:
        i, i0, start = 0, 0, time.monotonic()
        while not self._stop.is_set():
            if not self._go.is_set():
                await self._go.wait()
                start, i0 = time.monotonic(), i
            delay = start + (i - i0) / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            job_id = f"{self.kafka.topic_prefix}-{self.name}-{i:06d}"
            job = Job(job_id=job_id, model="vision", inputs={"image": self._images[i % len(self._images)]},
                      **self.job_fields)
            self.sent[job_id] = time.time()
            ack = await self._producer.send(self.infer, encode(job), key=job_id.encode(), headers=self.headers)
            ack.add_done_callback(functools.partial(self._acknowledged, job_id))
            i += 1

    def _acknowledged(self, job_id: str, ack: asyncio.Future) -> None:
        if ack.cancelled() or ack.exception() is not None:
            self.ack_failures += 1
        else:
            self.acked[job_id] = time.time()

    async def stop_publishing(self, drain_s: float = 30) -> None:
        """Stop publishing and wait (up to `drain_s`) for the results of everything sent."""
        self._stop.set()
        self._go.set()
        await self._tasks[1]
        await self._producer.flush()
        deadline = time.monotonic() + drain_s
        while set(self.sent) - set(self.received) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop reading; close both clients."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._producer.stop()
        await self._consumer.stop()

    def _sent(self, since: float, until: float, among: dict[str, Any]) -> list[tuple[str, float]]:
        """(job id, send time) of the jobs sent in [since, until) (wall clock) that are in `among`."""
        return [(j, t) for j, t in self.sent.items() if since <= t < until and j in among]

    def latencies_ms(self, since: float, until: float) -> list[float]:
        """Latency of each of the jobs sent in [since, until) that has a result."""
        return [(self.received[j] - t) * 1000 for j, t in self._sent(since, until, self.received)]

    def parts_ms(self, since: float, until: float) -> tuple[list[float], list[float]]:
        """For the jobs sent in [since, until): (publish → batch cut, model call done → result read), in ms."""
        parts = [self.timings[j] for j, _ in self._sent(since, until, self.timings)]
        return [p[0] for p in parts], [p[1] for p in parts]

    def acks_ms(self, since: float, until: float) -> list[float]:
        """For the jobs sent in [since, until): ms from publish to his client seeing the broker's acknowledgement."""
        return [(self.acked[j] - t) * 1000 for j, t in self._sent(since, until, self.acked)]


async def _results_written(kafka: KafkaSettings, topic: str) -> int:
    """How many records `topic` holds (end offsets summed; nothing is deleted during a run)."""
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(await partition_count(kafka, topic, wait_s=10))]
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


async def _wait_for_results(kafka: KafkaSettings, topic: str, want: int, stall_s: float = 60) -> float:
    """Poll `topic`'s end offsets until it holds `want` records; the wall time that was first seen."""
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(await partition_count(kafka, topic, wait_s=10))]
        count, moved_at = -1, time.monotonic()
        while True:
            now = sum((await consumer.end_offsets(parts)).values())
            if now >= want:
                return time.time()
            if now != count:
                count, moved_at = now, time.monotonic()
            elif time.monotonic() - moved_at > stall_s:
                raise TimeoutError(f"{topic} stopped at {now} of {want} records")
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()


class Bench:
    """Broker, registry and the runs; the parts of a run (bench/priority_flood.py runs them on other topics)."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from bench.procs import LocalBroker, split_cores

        self.args, self.tmp = args, tmp
        self.home = tmp / "home"
        self.broker = LocalBroker(args.port, tmp / "kafka")
        self.service_pid: int | None = None
        self.service_cores, self.others = split_cores() if args.pin else (set(), set())
        """`--pin`: the service's core, and the others (the broker, the flood, the probe); empty sets: no pinning."""

    def pin_broker_and_probe(self) -> None:
        """`--pin`: the broker and this process (the probe's) on the cores the service does not have."""
        from bench.procs import pin_beside_broker

        if not self.args.pin:
            return
        pin_beside_broker(self.broker, self.others, [os.getpid()])
        log(f"pinned: the service on core(s) {sorted(self.service_cores)}; the broker, the flood and the probe on "
            f"{sorted(self.others)}")

    def settings(self, tag: str) -> KafkaSettings:
        """A fresh topic prefix (`<tag>-<random>`) on this broker."""
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap, topic_prefix=f"{tag}-{uuid.uuid4().hex[:6]}")

    def flood_rate(self, capacity: float) -> float:
        """The flood's jobs/s in a run that measured `capacity` (0: as fast as its producer takes them)."""
        return self.args.flood_times_capacity * capacity if self.args.flood_times_capacity else self.args.flood_rate

    def alice(self, kafka: KafkaSettings, name: str, count: int, rate: float, topic: str | None = None):
        """Alice's flood (to her infer topic, or `topic`), as a process of its own (so her publishing is not on
        bob's event loop)."""
        from bench.procs import ChildProcess, service_env

        topic = topic or ModelTopics.of("vision", kafka.topic_prefix).tenant_infer("alice")
        args = [str(Path(__file__).resolve()), "flood", "--topic", topic, "--prefix", f"{kafka.topic_prefix}-{name}",
                "--count", str(count), "--rate", str(rate), "--nice", str(self.args.flood_nice),
                "--client", self.args.flood_client, "--cores", ",".join(map(str, sorted(self.others)))]
        return ChildProcess(args, service_env(self.broker.bootstrap, kafka.topic_prefix, self.home),
                            self.tmp / f"{kafka.topic_prefix}-{name}.log", marker="alice flood done: ")

    @contextlib.asynccontextmanager
    async def serving(self, kafka: KafkaSettings, result) -> AsyncIterator[None]:
        """The vision service under test (trace export off; `--noop`: its no-op model) and other work sampled, for the
        block; the mean of other work goes to `result.other_cores`."""
        from bench.procs import ChildProcess, OtherWork, pin, service_env

        env = service_env(self.broker.bootstrap, kafka.topic_prefix, self.home, {"OTEL_TRACES_EXPORTER": "none"})
        command = ["bench/transport.py", "--model", "vision"] if self.args.noop else ["-m", "aiaas.vision"]
        service = ChildProcess(command, env, self.tmp / f"{kafka.topic_prefix}-vision.log").start()
        self.service_pid = service.pid
        if self.args.pin:
            pin(service.pid, self.service_cores)
        other = OtherWork(lambda: {pid for pid in (self.broker.pid, service.pid) if pid})
        other.start()
        try:
            yield
        finally:
            used = other.stop()
            result.other_cores = used[0] if used else None
            service.stop()

    async def service_metrics(self) -> Scrape | None:
        """A scrape of the service's /metrics, found by its target file; None when it has none."""
        return await asyncio.to_thread(scrape_service, self.home, self.service_pid)

    async def warm_up(self, kafka: KafkaSettings, topic: str, results: str) -> None:
        """100 of alice's jobs to `topic`, answered in `results` (the service logs "ready" before its group has
        assigned it the partitions)."""
        await self.burst(kafka, "warm-up", 100, 0, topic, results)

    @staticmethod
    async def prober_ready(kafka: KafkaSettings, prober: Prober) -> None:
        """Start `prober` and pause it once its first result is in."""
        await prober.start()
        await _wait_for_results(kafka, prober.results, 1)
        prober.pause()

    async def capacity(self, kafka: KafkaSettings, topic: str, results: str) -> float:
        """`--capacity-jobs` of alice's jobs as fast as she can, alone: jobs / (first publish → last result)."""
        count = self.args.capacity_jobs
        first_at, _, last_at = await self.burst(kafka, "capacity", count, 0, topic, results)
        return count / (last_at - first_at)

    async def burst(self, kafka: KafkaSettings, name: str, count: int, rate: float, topic: str,
                    results: str) -> tuple[float, float, float]:
        """Alice's process publishes `count` jobs to `topic` (`rate`: as `flood`'s). (Her first send's wall time,
        seconds she published for, wall time `results` first held all their results.)"""
        before = await _results_written(kafka, results)
        flooder = self.alice(kafka, name, count, rate, topic)
        await asyncio.to_thread(lambda: flooder.start(timeout=600))
        done = flooder.log_text().split("alice flood done: ", 1)[1]  # "N acked, first send at T in S s (…)"
        first_at = float(done.split("first send at ", 1)[1].split()[0])
        publish_s = float(done.split(" in ", 1)[1].split(" s")[0])
        return first_at, publish_s, await _wait_for_results(kafka, results, before + count)

    async def alone(self, prober: Prober, what: str) -> tuple[float, float]:
        """After 2 s of quiet, `prober` publishes alone for `--solo-s`; (from, until), wall clock."""
        await asyncio.sleep(2)
        solo_from = time.time()
        prober.resume()
        log(f"{what} alone for {self.args.solo_s:.0f} s")
        await asyncio.sleep(self.args.solo_s)
        return solo_from, time.time()

    async def one_run(self, number: int) -> RunResult:
        """Capacity, bob alone, bob during alice's flood; a fresh prefix and service."""
        args, result = self.args, RunResult()
        kafka = self.settings(f"tf{number}")
        topics = ModelTopics.of("vision", kafka.topic_prefix)
        await ensure_topics(kafka, service_topics("vision", kafka) + [
            name for tenant in TENANTS for name in (topics.tenant_infer(tenant), topics.tenant_results(tenant))])
        alice, alice_results = topics.tenant_infer("alice"), topics.tenant_results("alice")
        bob = Prober(kafka, args.bob_rate, "bob", topics.tenant_infer("bob"), topics.tenant_results("bob"))
        async with self.serving(kafka, result), bob:
            await self.warm_up(kafka, alice, alice_results)
            await self.prober_ready(kafka, bob)
            log(f"run {number}: capacity burst of {args.capacity_jobs:,} jobs")
            result.capacity = await self.capacity(kafka, alice, alice_results)
            before_solo = await self.service_metrics()
            solo_from, solo_until = await self.alone(bob, f"run {number}: capacity {result.capacity:,.0f} jobs/s; bob")
            before_flood = await self.service_metrics()
            result.stops["alone"] = Stops.between(before_solo, before_flood)
            result.alice_jobs = args.flood_jobs
            log(f"run {number}: alice floods {result.alice_jobs:,} jobs")
            async with _quota(kafka, args.flood_quota):
                flood_from, result.alice_publish_s, flood_until = await self.burst(
                    kafka, "flood", result.alice_jobs, self.flood_rate(result.capacity), alice, alice_results)
            result.stops["during the flood"] = Stops.between(before_flood, await self.service_metrics())
            result.flood_rate = result.alice_jobs / result.alice_publish_s
            result.flood_s = flood_until - flood_from
            await bob.stop_publishing()
            result.solo = bob.latencies_ms(solo_from, solo_until)
            result.during = bob.latencies_ms(flood_from, flood_until)
            published_at = flood_from + result.alice_publish_s
            result.parts = {phase: (bob.latencies_ms(lo, hi), bob.acks_ms(lo, hi), *bob.parts_ms(lo, hi))
                            for phase, lo, hi in (
                ("alone", solo_from, solo_until), ("during the flood", flood_from, flood_until),
                ("· while alice publishes", flood_from, published_at),
                ("· while her backlog drains", published_at, flood_until))}
            result.missing = len(set(bob.sent) - set(bob.received))
            result.failed_sends = bob.ack_failures
        return result


@contextlib.asynccontextmanager
async def _quota(kafka: KafkaSettings, byte_rate: int) -> AsyncIterator[None]:
    """For the block, the broker limits alice's producer to `byte_rate` bytes/s (a client-id quota: on this broker
    without logins every client is the same user); 0: no quota. The block starts once the broker reports the quota
    (it applies it when it reads the controller's record) and ends once it reports none again."""
    from aiaas.kafka.quotas import describe_quota, set_quotas

    async def until(want: dict[str, float]) -> None:
        async with asyncio.timeout(30):
            while await describe_quota(kafka, "client-id", FLOOD_CLIENT_ID) != want:
                await asyncio.sleep(0.1)

    if not byte_rate:
        yield
        return
    await set_quotas(kafka, "client-id", [FLOOD_CLIENT_ID], {"producer_byte_rate": byte_rate})
    await until({"producer_byte_rate": float(byte_rate)})
    try:
        yield
    finally:  # the next run's capacity burst is unthrottled
        await set_quotas(kafka, "client-id", [FLOOD_CLIENT_ID], {"producer_byte_rate": None})
        await until({})


def _row(number: int | str, r: RunResult) -> str:
    p = percentile
    return (f"| {number} | {r.capacity:,.0f} | {r.alice_jobs:,} | {r.flood_rate:,.0f} | {r.flood_s:.1f} s "
            f"| {r.alice_jobs / r.flood_s:,.0f} | {len(r.solo)} | {p(r.solo, 50):.1f} | {p(r.solo, 99):.1f} "
            f"| {len(r.during)} | {p(r.during, 50):.1f} | {p(r.during, 99):.1f} | **{r.ratio:.2f}x** "
            f"| {r.missing}{f' ({r.failed_sends} sends failed)' if r.failed_sends else ''} "
            f"| {'–' if r.other_cores is None else f'{r.other_cores:.2f}'} |")


HEADER = ("| run | capacity, alice alone (jobs/s) | alice's flood: jobs | published at (jobs/s) | first publish → "
          "last result | drained at (jobs/s) | bob alone: jobs | p50 ms | p99 ms | bob during flood: jobs | p50 ms "
          "| p99 ms | p99 flood / alone | bob missing | other work (cores) |")
RULE = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def breakdown(results: list[RunResult]) -> str:
    """Where bob's time goes, per run and phase: his publish (the broker's acknowledgement), before his job is in a
    batch, and after the model call."""
    p = percentile
    lines = ["| run | phase | bob's jobs | latency p50 ms | p99 ms | publish → acked: p50 ms | p99 ms "
             "| publish → batch cut: p50 ms | p99 ms | model done → result read: p50 ms | p99 ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(results, 1):
        for phase, (total, acked, before, after) in r.parts.items():
            lines.append(f"| {i} | {phase} | {len(total)} | {p(total, 50):.1f} | {p(total, 99):.1f} "
                         f"| {p(acked, 50):.1f} | {p(acked, 99):.1f} "
                         f"| {p(before, 50):.1f} | {p(before, 99):.1f} | {p(after, 50):.1f} | {p(after, 99):.1f} |")
    return "\n".join(lines)


def table(results: list[RunResult]) -> str:
    """One row per run and the medians of the per-run figures."""
    lines = [HEADER, RULE, *(_row(i + 1, r) for i, r in enumerate(results))]
    if len(results) > 1:
        med = statistics.median
        ratios = [r.ratio for r in results]
        lines.append(f"\nMedian over runs: bob p99 alone {med(percentile(r.solo, 99) for r in results):.1f} ms, "
                     f"during the flood {med(percentile(r.during, 99) for r in results):.1f} ms; p99 ratio "
                     f"{med(ratios):.2f}x (runs: {', '.join(f'{x:.2f}x' for x in ratios)}); target ≤ 3x.")
    return "\n".join(lines)


def _positive(text: str) -> float:
    """An argument that must be a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def common_options(parser: argparse.ArgumentParser, port: int) -> None:
    """The options this benchmark and bench/priority_flood.py share."""
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--capacity-jobs", type=int, default=10_000, help="the burst (alone) that measures capacity")
    parser.add_argument("--flood-jobs", type=int, default=60_000, help="how many jobs the flood publishes")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--flood-rate", type=float, default=0.0,
                      help="the flood's jobs/s (0: as fast as its producer takes them)")
    rate.add_argument("--flood-times-capacity", type=_positive, default=0.0, metavar="X",
                      help="the flood's jobs/s as X times the capacity its run measured first (2: a backlog that grows "
                      "about as fast as the service drains it)")
    parser.add_argument("--flood-nice", type=int, default=0, choices=range(20), metavar="0..19",
                        help="the flood's process runs at this niceness: 19 gives the cores to the service, the broker "
                        "and the prober first, as if alice published from machines of her own (0: an equal share)")
    parser.add_argument("--flood-client", choices=CLIENTS, default="aiokafka",
                        help="the flood's Kafka client: aiokafka (pure Python, as the services) or librdkafka "
                        "(confluent-kafka, C)")
    parser.add_argument("--pin", action="store_true",
                        help="the service under test on the machine's last core; the broker, the flood's process and "
                        "the probe (this process) on the others (bench/ab.py's --pin): the flood's publishing and the "
                        "broker's intake of it then take no CPU from the service, but still share cores with the probe "
                        "and each other. The service starts on every core and is moved once it is ready")
    parser.add_argument("--noop", action="store_true",
                        help="serve with the transport ceiling's no-op model (bench/transport.py: the same pipeline, "
                        "tenants and priorities, no model work): what the rest of the machine costs. It serves no "
                        "/metrics, so the stops tables stay empty")
    parser.add_argument("--port", type=int, default=port, help="the broker's port (controller: port + 1)")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    f = sub.add_parser("flood", help="alice's publishing process (run by the benchmark and the fault suite)")
    f.add_argument("--topic", required=True)
    f.add_argument("--prefix", required=True, help="job ids are <prefix>-0000000 …")
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--rate", type=float, default=0.0, help="jobs/s (0: as fast as the producer takes them)")
    f.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by this much first")
    f.add_argument("--cores", default="", help="run on these cores only (comma-separated; empty: any)")
    f.add_argument("--client", choices=CLIENTS, default="aiokafka", help="the Kafka client she publishes with")
    parser.add_argument("--bob-rate", type=float, default=50.0, help="bob's jobs/s (open loop)")
    parser.add_argument("--solo-s", type=float, default=20.0, help="how long bob runs alone")
    parser.add_argument("--flood-quota", type=int, default=0, metavar="BYTES_PER_S",
                        help="a Kafka producer quota on alice's flood, bytes/s, as `aiaas acl apply "
                        "--producer-byte-rate` sets per tenant (0: none)")
    common_options(parser, port=29592)
    return parser.parse_args(argv)


async def _main_async(args: argparse.Namespace, tmp: Path, bench_class: type[Bench],
                      row: Callable[[int, Any], str]) -> list:
    from aiaas.registry.store import Registry
    from aiaas.vision.trainer import build

    build(Registry(tmp / "home" / "registry"))
    bench = bench_class(args, tmp)
    await asyncio.to_thread(bench.broker.start)
    bench.pin_broker_and_probe()
    results = []
    try:
        for number in range(1, args.runs + 1):
            results.append(await bench.one_run(number))
            log(row(number, results[-1]))
    finally:
        bench.broker.stop()
    return results


def run_benchmark(args: argparse.Namespace, bench_class: type[Bench], row: Callable[[int, Any], str],
                  name: str) -> list:
    """`bench_class(args, tmp).one_run` for each of `--runs` (each run's `row` logged), on a vision model built
    into a temporary registry and a broker of its own; whatever it started stopped, the temporary folder removed."""
    from bench.procs import stop_all

    tmp = Path(tempfile.mkdtemp(prefix=f"aiaas-{name}-"))
    try:
        return asyncio.run(_main_async(args, tmp, bench_class, row))
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def report_context(script: str, argv: list[str] | None) -> tuple[str, str, str]:
    """For a report's first lines: (date, CPU and cores; the command line; ` (service settings: …)` for the
    AIAAS_VISION_* variables set, else "")."""
    from bench.report import cpu_name

    command = f".venv/bin/python bench/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])
    settings = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("AIAAS_VISION_"))
    return (f"{date.today()}, {cpu_name()}, {os.cpu_count()} cores", command.strip(),
            f" (service settings: {settings})" if settings else "")


def flood_pace(args: argparse.Namespace, who: str) -> str:
    """For a report's first line: how fast the flood was published, and with which client."""
    if args.flood_times_capacity:
        how = f"at {args.flood_times_capacity:g}x the capacity its run measured"
    else:
        how = f"at {args.flood_rate:,.0f}/s" if args.flood_rate else f"as fast as {who} can"
    return f"{how} with {args.flood_client}"


def service_note(args: argparse.Namespace) -> str:
    """For a report's first line: what served the jobs when it was not the vision service, and where it ran when it
    was pinned."""
    note = " Served by the no-op model (`--noop`: bench/transport.py; no /metrics, so no stops)." if args.noop else ""
    if args.pin:
        note += (" Pinned (`--pin`): the service on the machine's last core; the broker, the flood's process and the "
                 "probe on the others.")
    return note


def write_report(text: str, out: Path | None) -> None:
    """Print the report; also write it (Markdown) to `out` when given."""
    print(text)
    if out:
        out.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with `flood`, alice's publishing); print the table."""
    args = _parse(argv)
    if args.command == "flood":
        os.nice(args.nice)
        if args.cores:
            os.sched_setaffinity(0, {int(core) for core in args.cores.split(",")})
        publish = (flood_librdkafka(KafkaSettings(), args.topic, args.prefix, args.count, args.rate)
                   if args.client == "librdkafka" else
                   asyncio.run(flood(KafkaSettings(), args.topic, args.prefix, args.count, args.rate)))
        acked, first_at, seconds = publish
        print(f"alice flood done: {acked} acked, first send at {first_at:.6f} in {seconds:.3f} s "
              f"({acked / seconds:,.0f}/s)", flush=True)
        return 0
    results = run_benchmark(args, Bench, _row, "tenant-flood")
    stops = [(str(i), phase, found) for i, r in enumerate(results, 1) for phase, found in r.stops.items()]
    machine, command, settings = report_context("tenant_flood.py", argv)
    how = flood_pace(args, "she")
    if args.flood_quota:
        how += f" under a broker quota of {args.flood_quota:,.0f} bytes/s on her producer"
    text = (f"Tenant flood ({machine}): bob at {args.bob_rate:g} jobs/s "
            f"alone for {args.solo_s:g} s, then while alice publishes {args.flood_jobs:,} jobs {how}{settings}."
            f"{service_note(args)}\n"
            f"Command: `{command}`\n\n{table(results)}\n\nWhere bob's time went (his send → his client seeing the "
            f"broker's acknowledgement, acks=all; his results' `timings.queue_wait_ms`: job made just before its send "
            f"→ its batch cut; then `completed_at` → read here):\n\n{breakdown(results)}\n\n"
            f"{stops_title('in each phase')}"
            f"\n\n{stops_table(stops)}")
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
