"""Horizontal scaling, measured: 1, 2, 4 … replicas of one service on a 12-partition topic.

    .venv/bin/python bench/scaling.py                                  # replicas 1 2 4 8 16, ~2.5 min
    .venv/bin/python bench/scaling.py --rounds 3                       # each 3 times, median (~7 min)
    .venv/bin/python bench/scaling.py --replicas 1 2 4 8 12 16 --window 15
    .venv/bin/python bench/scaling.py --batch-ms 20 --per-job-ms 0.2 --max-batch 16

The model is `bench/waiting_model.py`: its batch call *waits* (`--batch-ms` + `--per-job-ms` per job) instead of
computing, as a call into a GPU does, and runs on the model thread (the service's default `model_calls="thread"`),
so one replica serves at most max_batch / (batch_ms + per_job_ms × max_batch) jobs/s however many cores there
are, and on this 2-core machine replicas add throughput until the broker, the publisher or the CPU runs out.
Each replica is the real service: `run_service` with that runtime, its consumer group, pipeline and producer.

It starts its own broker (`infra/kafka/kafka.sh` through tests/harness.py, port `--port`, a temporary state dir),
then, for each row:

1. **publisher alone** (first row): the backlog's envelopes, encoded before the clock starts, published into a
   fresh topic with no service — the ceiling of what the publisher (and the broker taking its records) can feed;
2. **N replicas**: a fresh topic prefix (its own topics and consumer group), every topic created with
   `--partitions` partitions (AIAAS_KAFKA_PARTITIONS for the services too); N processes
   `python -m bench.waiting_model`, each with its own AIAAS_WAITING_INSTANCE_ID; waits until every one answers
   `/readyz` with 200 (their URLs from the target files, `aiaas.metrics.targets.list_targets`) and the group is
   settled (the broker describes it Stable with N members whose assignments hold every infer partition, twice in
   a row); then publishes a backlog sized to outlast the window, waits `--warmup` s, and counts the results
   whose record timestamps (set by the services' producers) fall in the next `--window` s. Per replica: the jobs
   its `/metrics` counted in the window (`aiaas_jobs_total`), its partitions from the group's assignment, and
   the CPU (from /proc) of the services, the broker and this process; then SIGTERM to all replicas.

A row whose backlog ran out before the window ended is flagged (its figure is a lower bound). The replicas import
aiaas from HEAD's `services/` (git archive into the temporary folder), so others' edits to the working tree during a
run do not reach them (`--working-tree` to run the working tree's). Trace export is off (OTEL_TRACES_EXPORTER=none;
spans are still made). Prints a Markdown table and writes it with a plot to
`--out` (default `bench/results/<date>-scaling-<machine>.md` and `.png`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job, new_job_id
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.admin import ensure_topics, partition_count
from aiaas.metrics.targets import Target, list_targets
from aiaas.settings import KafkaSettings
from bench.procs import (
    REPO,
    ChildProcess,
    LocalBroker,
    OtherWork,
    busy_cpu_seconds,
    cpu_seconds,
    kafka_version,
    service_env,
    stop_all,
)
from bench.report import MachineInfo, machine_slug
from bench.run import log, prepare_topics
from bench.waiting_model import MODEL, per_replica_rate

__all__ = ["Row", "main"]

Envelope = tuple[bytes, bytes, list[tuple[str, bytes]]]
"""(key, encoded job, headers) of one job, made before the clock starts."""


@dataclass
class Row:
    """One measured configuration: N replicas (0: the publisher alone)."""

    replicas: int
    jobs_per_s: float = float("nan")
    """Results per second in the window (for the publisher row: records acknowledged per second)."""
    publish_per_s: float = float("nan")
    """How fast the backlog was published (acknowledged by the broker)."""
    backlog: int = 0
    ran_out: bool = False
    """The backlog was used up before the window ended: `jobs_per_s` is a lower bound."""
    infer_partitions: list[int] = field(default_factory=list)
    """Infer-topic partitions of each group member (the group's assignment), most first."""
    replica_jobs_per_s: list[float] = field(default_factory=list)
    """Jobs/s each replica's /metrics counted in the window, most first."""
    mean_batch: float = float("nan")
    errors: int = 0
    """Results in the window whose status was not ok."""
    idle_cores: list[float] = field(default_factory=list)
    """CPU (cores) of each replica that answered no job in the window."""
    logged_errors: int = 0
    """ERROR lines in the replicas' logs (0 in a clean row)."""
    cores: dict[str, float] = field(default_factory=dict)
    """CPU in the window, in cores: services, broker, bench (this process), machine (all of it)."""
    startup_s: float = float("nan")
    """Start of the first replica → every replica ready and the group settled."""
    timeline: list[tuple[float, float]] = field(default_factory=list)
    """(seconds after the publish started, results/s) in 0.5 s buckets."""
    window: tuple[float, float] = (0.0, 0.0)
    """The measured window, in seconds after the publish started."""
    rounds: list[float] = field(default_factory=list)
    """jobs/s of every round of this replica count (`--rounds`); this row is the median round."""


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per replica count, in the order first measured: its median round (the lower one of an even count),
    with every round's jobs/s in `rounds`."""
    by_count: dict[int, list[Row]] = {}
    for row in rows:
        by_count.setdefault(row.replicas, []).append(row)
    chosen = []
    for same in by_count.values():
        ranked = sorted(same, key=lambda r: r.jobs_per_s)
        middle = ranked[(len(ranked) - 1) // 2]
        middle.rounds = [r.jobs_per_s for r in same]
        chosen.append(middle)
    return chosen


# -- publishing --------------------------------------------------------------------------------


def envelopes(n: int) -> list[Envelope]:
    """`n` jobs for the waiting model, each with its own id and trace context (as a traced client sends them)."""
    made = []
    for i in range(n):
        job = Job(job_id=new_job_id(), model=MODEL, inputs={"n": i})
        ids = os.urandom(24).hex()
        made.append((job.job_id.encode(), encode(job), [("traceparent", f"00-{ids[:32]}-{ids[32:]}-01".encode())]))
    return made


async def publish(kafka: KafkaSettings, topic: str, items: list[Envelope],
                  mark: Callable[[], object] = lambda: None) -> tuple[float, object, object]:
    """Publish every item as fast as one aiokafka producer with the client's settings can (acks=all, idempotent,
    linger 2 ms; one send after the other, then every acknowledgement, as bench/load.py's RawLoad): the seconds it
    took until the broker had acknowledged them all, and what `mark()` said when the clock started and stopped."""
    producer = AIOKafkaProducer(**kafka.connection_kwargs(), acks="all", enable_idempotence=True, linger_ms=2,
                                max_request_size=kafka.max_message_bytes + 64 * 1024)
    await producer.start()
    try:
        before, started = mark(), time.perf_counter()
        acks = [await producer.send(topic, value, key=key, headers=headers) for key, value, headers in items]
        await asyncio.gather(*acks)
        seconds = time.perf_counter() - started
        return seconds, before, mark()
    finally:
        await producer.stop()


# -- the group, the replicas' endpoints --------------------------------------------------------


async def group_assignment(kafka: KafkaSettings, group: str, infer_topic: str) -> tuple[str, list[int]]:
    """The group's state and, per member, how many partitions of the infer topic it is assigned."""
    admin = AIOKafkaAdminClient(**kafka.connection_kwargs())
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        described = response.to_object()["groups"][0]
        counts = []
        for member in described["members"]:
            raw = member["member_assignment"]
            if not raw:
                counts.append(0)
                continue
            assignment = ConsumerProtocolMemberAssignment.decode(raw)
            counts.append(sum(len(parts) for topic, parts in assignment.assignment if topic == infer_topic))
        return described["state"], sorted(counts, reverse=True)
    finally:
        await admin.close()


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - our own local endpoints
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", re.MULTILINE)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` (exact sample name) whose labels include `labels`."""
    total = 0.0
    for sample, label_text, value in _SAMPLE.findall(text):
        if sample == name and all(f'{k}="{v}"' in (label_text or "") for k, v in labels.items()):
            total += float(value)
    return total


async def scrape(urls: list[str]) -> list[str]:
    """Every replica's /metrics text (empty where it did not answer)."""
    answers = await asyncio.gather(*(asyncio.to_thread(_get, f"{url}/metrics") for url in urls))
    return [text for _, text in answers]


# -- one row -----------------------------------------------------------------------------------


class Scaling:
    """One run: the broker, the temporary folder, the settings every row shares."""

    def __init__(self, args: argparse.Namespace, tmp: Path, broker: LocalBroker) -> None:
        self.args, self.tmp, self.broker = args, tmp, broker
        self.run_id = uuid.uuid4().hex[:6]
        self.model_rate = per_replica_rate(args.max_batch, args.batch_ms, args.per_job_ms)
        self.publisher_per_s = float("nan")
        self.measured = 0
        """Rows measured so far: each row's prefix (topics, group, results, outcome memory) is its own."""

    def prefix(self, what: str) -> str:
        """A topic prefix no other row of any run uses. (A row that reused one would find its jobs' ids in the
        results topic already, and the services would answer them from their outcome memory without the model.)"""
        self.measured += 1
        return f"scale-{self.run_id}-{self.measured}-{what}"

    def kafka(self, prefix: str) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap, topic_prefix=prefix,
                             partitions=self.args.partitions)

    async def publisher_alone(self, items: list[Envelope]) -> Row:
        """The backlog into a fresh topic with nobody consuming it."""
        kafka = self.kafka(self.prefix("publisher"))
        topics = ModelTopics.of(MODEL, kafka.topic_prefix)
        await ensure_topics(kafka, [topics.infer])
        while await partition_count(kafka, topics.infer) == 0:
            await asyncio.sleep(0.1)
        seconds, before, after = await publish(kafka, topics.infer, items, lambda: self._cpu([]))
        row = Row(0, jobs_per_s=len(items) / seconds, publish_per_s=len(items) / seconds, backlog=len(items))
        row.cores = self._cores(before, after)  # type: ignore[arg-type]
        self.publisher_per_s = row.publish_per_s
        log(f"publisher alone: {len(items):,} jobs in {seconds:.1f} s = {row.publish_per_s:,.0f}/s "
            f"(this process {row.cores['bench']:.2f} cores, broker {row.cores['broker']:.2f})")
        return row

    def _cpu(self, services: list[ChildProcess]) -> tuple[float, dict[str, float]]:
        """(monotonic time, CPU seconds so far of: services, broker, bench, machine)."""
        used = {"services": sum(_cpu_or_zero(c.pid) for c in services),
                "broker": _cpu_or_zero(self.broker.pid or 0),
                "bench": cpu_seconds(os.getpid()),
                "machine": busy_cpu_seconds()}
        return time.monotonic(), used

    @staticmethod
    def _cores(before: tuple[float, dict[str, float]], after: tuple[float, dict[str, float]]) -> dict[str, float]:
        """Cores each used between two `_cpu` snapshots; `others`: the machine less services, broker and bench."""
        elapsed = after[0] - before[0]
        cores = {k: (after[1][k] - before[1][k]) / elapsed for k in after[1]}
        cores["others"] = max(0.0, cores["machine"] - cores["services"] - cores["broker"] - cores["bench"])
        return cores

    def backlog_for(self, replicas: int) -> int:
        """Jobs enough to keep `replicas` busy through the publish, the warm-up and the window, with room to spare:
        at their model's bound (no more than the partitions allow busy), for 1.5× warm-up + window, plus what
        they take while the backlog is published."""
        capacity = min(replicas, self.args.partitions) * self.model_rate
        needed = capacity * (self.args.warmup + self.args.window) * 1.5
        if self.publisher_per_s > capacity:
            needed /= 1 - capacity / self.publisher_per_s
        else:  # the publisher is the slower: they would drain whatever it publishes; ask for plenty
            needed *= 3
        return int(min(max(needed, 5000), self.args.max_backlog))

    async def replicas(self, n: int, pool: list[Envelope]) -> Row:
        """N replicas on a fresh prefix: start, settle, publish the backlog, measure the window, stop."""
        args = self.args
        prefix = self.prefix(f"r{n}")
        kafka = self.kafka(prefix)
        topics = ModelTopics.of(MODEL, prefix)
        group = f"{prefix}.{MODEL}"
        home = self.tmp / f"home-{prefix}"
        await prepare_topics(kafka, MODEL)
        extra = {"AIAAS_KAFKA_PARTITIONS": str(args.partitions), "AIAAS_WAITING_MAX_BATCH": str(args.max_batch),
                 "AIAAS_WAITING_BATCH_MS": str(args.batch_ms), "AIAAS_WAITING_PER_JOB_MS": str(args.per_job_ms),
                 "AIAAS_WAITING_MODEL_CALLS": "thread"}
        children = [ChildProcess(["-m", "bench.waiting_model"],
                                 service_env(self.broker.bootstrap, prefix, home,
                                             extra | {"AIAAS_WAITING_INSTANCE_ID": f"replica-{i}"},
                                             export_traces=False),
                                 self.tmp / "logs" / f"{prefix}-replica-{i}.log", name=f"replica {i} of {n}")
                    for i in range(n)]
        row = Row(n)
        started = time.monotonic()
        try:
            log(f"{n} replica(s): starting")
            await asyncio.gather(*(c.start_async(timeout=args.start_timeout) for c in children))
            targets = await self._settle(kafka, group, topics.infer, home, children, row)
            urls = [t.url for t in targets]
            row.startup_s = time.monotonic() - started
            log(f"{n} replica(s): ready and settled in {row.startup_s:.1f} s; infer partitions per member "
                f"{row.infer_partitions}")

            row.backlog = self.backlog_for(n)
            items = pool[:row.backlog]
            publish_started = time.time()
            seconds, _, _ = await publish(kafka, topics.infer, items)
            row.publish_per_s = len(items) / seconds
            log(f"{n} replica(s): published {len(items):,} jobs in {seconds:.1f} s ({row.publish_per_s:,.0f}/s)")
            await asyncio.sleep(args.warmup)

            before_metrics = await scrape(urls)
            before = self._cpu(children)
            each_before = [_cpu_or_zero(t.pid) for t in targets]
            t0 = time.time()
            await asyncio.sleep(args.window)
            t1 = time.time()
            each_after = [_cpu_or_zero(t.pid) for t in targets]
            after = self._cpu(children)
            after_metrics = await scrape(urls)
            row.cores = self._cores(before, after)
            jobs = [(metric_sum(b, "aiaas_jobs_total") - metric_sum(a, "aiaas_jobs_total")) / (t1 - t0)
                    for a, b in zip(before_metrics, after_metrics, strict=True)]
            row.replica_jobs_per_s = sorted(jobs, reverse=True)
            row.idle_cores = [(b - a) / (t1 - t0) for a, b, j in zip(each_before, each_after, jobs, strict=True)
                              if j == 0]
            batches = sum(metric_sum(b, "aiaas_batch_size_count") - metric_sum(a, "aiaas_batch_size_count")
                          for a, b in zip(before_metrics, after_metrics, strict=True))
            jobs_in_batches = sum(metric_sum(b, "aiaas_batch_size_sum") - metric_sum(a, "aiaas_batch_size_sum")
                                  for a, b in zip(before_metrics, after_metrics, strict=True))
            row.mean_batch = jobs_in_batches / batches if batches else float("nan")
        finally:
            log(f"{n} replica(s): stopping")
            await asyncio.gather(*(c.terminate(timeout=30) for c in children))
            row.logged_errors = sum(c.log_text().count(" ERROR ") for c in children)
        await self._count(kafka, topics.results, row, publish_started, t0, t1)
        log(f"{n} replica(s): {row.jobs_per_s:,.0f} jobs/s in the window (per replica "
            f"{', '.join(f'{r:,.0f}' for r in row.replica_jobs_per_s)}; mean batch {row.mean_batch:.1f}; "
            f"cores: services {row.cores['services']:.2f}, broker {row.cores['broker']:.2f}, "
            f"machine {row.cores['machine']:.2f}; idle replicas {sum(row.idle_cores):.3f})"
            f"{' — BACKLOG RAN OUT' if row.ran_out else ''}")
        return row

    async def _settle(self, kafka: KafkaSettings, group: str, infer_topic: str, home: Path,
                      children: list[ChildProcess], row: Row) -> list[Target]:
        """Wait until every replica is ready (/readyz 200) and the group is Stable with them all, every infer
        partition assigned, the same twice in a row; their targets (endpoint URL, pid)."""
        deadline = time.monotonic() + self.args.start_timeout
        pids = {c.pid for c in children}
        previous: list[int] | None = None
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the group {group} did not settle: last assignment {previous}")
            for child in children:
                if not child.alive:
                    raise RuntimeError(f"{child.name} exited; its log:\n{child.log_text()[-3000:]}")
            targets = [t for t in list_targets(home) if t.pid in pids]
            urls = [t.url for t in targets]
            ready = len(targets) == len(children) and all(
                status == 200 for status, _ in await asyncio.gather(*(asyncio.to_thread(_get, f"{u}/readyz")
                                                                      for u in urls)))
            if ready:
                state, counts = await group_assignment(kafka, group, infer_topic)
                settled = (state == "Stable" and len(counts) == len(children)
                           and sum(counts) == self.args.partitions)
                if settled and counts == previous:
                    row.infer_partitions = counts
                    return targets
                previous = counts if settled else None
            await asyncio.sleep(1.0)

    async def _count(self, kafka: KafkaSettings, topic: str, row: Row, publish_started: float, t0: float,
                     t1: float) -> None:
        """Read the row's whole results topic (after the replicas stopped, so nothing competes): results/s in the
        window by record timestamp, their statuses, the timeline, whether the backlog outlasted the window."""
        consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        stamps: list[int] = []
        try:
            partitions = [TopicPartition(topic, p) for p in range(await partition_count(kafka, topic))]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                    for record in records:
                        stamps.append(record.timestamp)
                        if t0 * 1000 <= record.timestamp < t1 * 1000:
                            status = msgpack.unpackb(record.value, raw=False).get("status")
                            row.errors += status != "ok"
        finally:
            await consumer.stop()
        in_window = sum(t0 * 1000 <= s < t1 * 1000 for s in stamps)
        row.jobs_per_s = in_window / (t1 - t0)
        row.ran_out = sum(s < t1 * 1000 for s in stamps) >= row.backlog
        row.window = (t0 - publish_started, t1 - publish_started)
        buckets: dict[int, int] = {}
        for s in stamps:
            key = math.floor((s / 1000 - publish_started) / 0.5)
            buckets[key] = buckets.get(key, 0) + 1
        if buckets:
            row.timeline = [(k * 0.5, buckets.get(k, 0) / 0.5) for k in range(min(buckets), max(buckets) + 1)]


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid) if pid else 0.0
    except OSError:
        return 0.0


# -- report ------------------------------------------------------------------------------------


def _partitions(counts: list[int]) -> str:
    """"3, 3, 3, 3" or, for many members, "1 ×12, 0 ×4"."""
    if len(counts) <= 4:
        return ", ".join(map(str, counts))
    groups: dict[int, int] = {}
    for c in counts:
        groups[c] = groups.get(c, 0) + 1
    return ", ".join(f"{c} ×{k}" for c, k in sorted(groups.items(), reverse=True))


def _per_replica(rates: list[float]) -> str:
    if len(rates) <= 4:
        return ", ".join(f"{r:,.0f}" for r in rates)
    busy = [r for r in rates if r >= 1]
    idle = len(rates) - len(busy)
    text = f"{min(busy):,.0f}–{max(busy):,.0f} ×{len(busy)}" if busy else ""
    return text + (f", 0 ×{idle}" if idle else "")


def _ratio(a: float, b: float) -> str:
    return "–" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}"


def table(rows: list[Row], args: argparse.Namespace, model_rate: float) -> list[str]:
    """The Markdown table."""
    one = next((r.jobs_per_s for r in rows if r.replicas == 1), float("nan"))
    lines = ["| replicas | infer partitions per replica | jobs/s | speed-up vs 1 | model bound | of bound "
             "| per replica jobs/s | mean batch | services cores | broker cores | other processes cores "
             "| machine busy cores |",
             "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = (f" ({min(r.rounds):,.0f}–{max(r.rounds):,.0f})" if len(r.rounds) > 1 else "")
        if r.replicas == 0:
            lines.append(f"| publisher alone | – | {r.jobs_per_s:,.0f}{spread} published | – | – | – | – | – | – "
                         f"| {r.cores['broker']:.2f} | {r.cores['others']:.2f} | {r.cores['machine']:.2f} |")
            continue
        bound = min(r.replicas, args.partitions) * model_rate
        flag = " (backlog ran out: at least)" if r.ran_out else ""
        lines.append(
            f"| {r.replicas} | {_partitions(r.infer_partitions)} | {r.jobs_per_s:,.0f}{spread}{flag} | "
            f"{_ratio(r.jobs_per_s, one)} | {bound:,.0f} | {r.jobs_per_s / bound:.2f} | "
            f"{_per_replica(r.replica_jobs_per_s)} | {r.mean_batch:.1f} | {r.cores['services']:.2f} | "
            f"{r.cores['broker']:.2f} | {r.cores['others']:.2f} | {r.cores['machine']:.2f} |")
    return lines


def details(rows: list[Row]) -> list[str]:
    """Per row: backlog, publish rate, start-up, errors."""
    lines = []
    for r in rows:
        if r.replicas == 0:
            lines.append(f"- publisher alone: {r.backlog:,} jobs published at {r.publish_per_s:,.0f}/s (this process "
                         f"{r.cores['bench']:.2f} cores, broker {r.cores['broker']:.2f}).")
            continue
        lines.append(f"- {r.replicas} replica(s): ready and settled {r.startup_s:.0f} s after the first start; backlog "
                     f"{r.backlog:,} jobs published at {r.publish_per_s:,.0f}/s while they served; window "
                     f"{r.window[0]:.1f}–{r.window[1]:.1f} s after the publish started; {r.errors} error results in "
                     f"the window; {r.logged_errors} ERROR lines in the replicas' logs"
                     + (f"; the {len(r.idle_cores)} replicas that answered no job used {sum(r.idle_cores):.3f} cores "
                        f"together ({', '.join(f'{c:.3f}' for c in r.idle_cores)})" if r.idle_cores else "")
                     +
                     f"{'; the backlog ran out before the window ended' if r.ran_out else ''}.")
    return lines


def plot(rows: list[Row], path: Path, title: str, partitions: int, model_rate: float) -> bool:
    """Jobs/s against replicas (with the model's bound and the publisher's rate), and results/s over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = [r for r in rows if r.replicas > 0]
    publisher = next((r for r in rows if r.replicas == 0), None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    xs = [r.replicas for r in measured]
    grid = list(range(1, max(xs) + 1))
    left.plot(grid, [min(n, partitions) * model_rate for n in grid], ":", color="grey",
              label=f"model bound: min(N, {partitions} partitions) × {model_rate:,.0f}/s")
    left.plot(xs, [r.jobs_per_s for r in measured], "o-", color="tab:blue", label="measured (results/s)")
    for r in measured:
        left.annotate(f"{r.jobs_per_s:,.0f}", (r.replicas, r.jobs_per_s), textcoords="offset points",
                      xytext=(4, -12), fontsize=8)
    top = 1.25 * max(max(min(n, partitions) * model_rate for n in grid), max(r.jobs_per_s for r in measured))
    if publisher is not None:
        if publisher.jobs_per_s <= top:
            left.axhline(publisher.jobs_per_s, color="tab:red", linestyle="--",
                         label=f"publisher alone: {publisher.jobs_per_s:,.0f}/s")
        else:  # far above: a line up there would flatten the curve
            left.plot([], [], " ", label=f"publisher alone: {publisher.jobs_per_s:,.0f}/s (above this scale)")
    left.axvline(partitions, color="black", linewidth=0.5)
    left.text(partitions, top * 0.02, f" {partitions} partitions", fontsize=8)
    left.set_xlabel("replicas")
    left.set_ylabel("jobs/s")
    left.set_xticks(xs)
    left.set_ylim(0, top)
    left.legend(fontsize=8, loc="upper left")
    left.set_title("throughput against replicas", fontsize=10)
    for r in measured:
        if r.timeline:
            t, rate = zip(*r.timeline, strict=True)
            (line,) = right.plot(t, rate, label=f"{r.replicas} replica(s)")
            right.axvspan(*r.window, color=line.get_color(), alpha=0.08)
    right.set_xlabel("seconds after the backlog's publish started")
    right.set_ylabel("results/s (0.5 s buckets)")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.set_title("results over time (shaded: the measured window)", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip()


def snapshot_services(tmp: Path) -> tuple[Path, str]:
    """HEAD's `services/` (git archive) under `tmp`, and HEAD's short hash: the replicas import aiaas from there, so
    edits made to the working tree during a run (others' work in progress) do not reach the processes it starts."""
    commit = _commit()
    archive = subprocess.run(["git", "archive", "HEAD", "services"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp / "services", commit


# -- main --------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, tmp: Path, broker: LocalBroker) -> tuple[list[Row], Scaling]:
    run = Scaling(args, tmp, broker)
    largest = run.model_rate * args.partitions * (args.warmup + args.window) * 6
    log(f"encoding up to {min(int(largest), args.max_backlog):,} job envelopes")
    pool = envelopes(min(int(largest), args.max_backlog))
    rows = []
    for i in range(args.rounds):
        if args.rounds > 1:
            log(f"round {i + 1} of {args.rounds}")
        rows.append(await run.publisher_alone(pool[:args.publisher_jobs]))
        # Every other round in the reverse order: a machine whose speed drifts does not favour one end.
        for n in (args.replicas if i % 2 == 0 else args.replicas[::-1]):
            rows.append(await run.replicas(n, pool))
    return median_rows(rows), run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="replica counts, in order")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of every topic")
    parser.add_argument("--batch-ms", type=float, default=40.0, help="the model's fixed wait per batch call")
    parser.add_argument("--per-job-ms", type=float, default=0.2, help="the model's further wait per job")
    parser.add_argument("--max-batch", type=int, default=16, help="AIAAS_WAITING_MAX_BATCH of every replica")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every replica count this many times (alternating order); the median is shown")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the publish before the window")
    parser.add_argument("--window", type=float, default=10.0, help="seconds counted")
    parser.add_argument("--publisher-jobs", type=int, default=60_000, help="jobs of the publisher-alone row")
    parser.add_argument("--max-backlog", type=int, default=400_000, help="most jobs of one row's backlog")
    parser.add_argument("--start-timeout", type=float, default=240.0, help="seconds for replicas to start and settle")
    parser.add_argument("--port", type=int, default=29692, help="port of the benchmark's own broker")
    parser.add_argument("--out", type=Path, help="the report (default bench/results/<date>-scaling-<machine>.md)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) and say where")
    parser.add_argument("--working-tree", action="store_true",
                        help="replicas import aiaas from the working tree (default: HEAD's services/, git archive)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop broker and children

    command = " ".join([".venv/bin/python bench/scaling.py", *sys.argv[1:]])
    info = MachineInfo.collect()
    day = time.strftime("%Y-%m-%d")
    out = args.out or REPO / "bench" / "results" / f"{day}-scaling-{machine_slug(info)}.md"
    tmp = Path(tempfile.mkdtemp(prefix="aiaas-scaling-"))
    broker = LocalBroker(args.port, tmp / "kafka")
    other_work = OtherWork(lambda: {broker.pid} if broker.running and broker.pid else set())
    other_work.start()
    started = time.monotonic()
    commit = _commit()
    if args.working_tree:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "services"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        code = f"services/ of the working tree at {commit}{' (with uncommitted changes)' if dirty else ''}"
    else:
        services, commit = snapshot_services(tmp)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(services), os.environ.get("PYTHONPATH")]))
        code = f"aiaas at {commit} (the replicas import HEAD's services/, git archive)"
    try:
        log(f"starting the broker on 127.0.0.1:{args.port}")
        broker.start()
        rows, run = asyncio.run(measure(args, tmp, broker))
    finally:
        info.other_work = other_work.stop()
        info.stolen = other_work.stolen
        stop_all()
        if args.keep:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    report = [
        f"# Horizontal scaling: replicas of one service on a {args.partitions}-partition topic — {day}", "",
        f"{info.cpu_described} · Python {info.python} · Apache Kafka {kafka_version()} (single local KRaft node) · "
        f"aiokafka {info.versions.get('aiokafka', '?')} · {code} · "
        f"{(time.monotonic() - started) / 60:.1f} min", "",
        f"    {command}", "",
        f"Model: `bench/waiting_model.py`, each batch call waits {args.batch_ms:g} ms + {args.per_job_ms:g} ms per "
        f"job on the model thread (`model_calls=thread`); max_batch {args.max_batch}, so one replica serves at most "
        f"{run.model_rate:,.0f} jobs/s (the model bound). Every topic has {args.partitions} partitions; trace export "
        f"off. A backlog is published once the replicas are ready and the group settled; jobs/s = results whose "
        f"timestamps fall in a {args.window:g} s window starting {args.warmup:g} s after the backlog was published"
        + (f"; each replica count measured in {args.rounds} rounds (alternating order), the median shown with the "
           "rounds' range" if args.rounds > 1 else "") + ".",
        "",
        *table(rows, args, run.model_rate), "",
        "Columns: *infer partitions per replica* from the consumer group's assignment (the broker's DescribeGroups; "
        "the retry topic's partitions are assigned too and not counted); *model bound* = min(replicas, partitions) × "
        "the one-replica bound; *per replica jobs/s* from each replica's `aiaas_jobs_total` over the window; *mean "
        "batch* from their `aiaas_batch_size` histograms; cores from /proc over the window (*other processes*: the "
        f"machine's busy time less the services', the broker's and this program's: work that is not this run's, and "
        f"the kernel's (loopback networking) that /proc charges to no process; "
        f"*machine busy*: every process, of {info.cores}).", "",
        *details(rows), "",
    ]
    if info.other_work:
        report.append(f"Other work on the machine (processes not this run's): {info.other_work[0]:.2f} cores on "
                      f"average, up to {info.other_work[1]:.2f}; hypervisor steal {info.stolen or 0:.2f} cores.")
        report.append("")
    text = "\n".join(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    if plot(rows, png, f"aiaas: replicas of one service on {args.partitions} partitions, a model that waits "
                       f"{args.batch_ms:g} ms + {args.per_job_ms:g} ms/job — {info.cpu}, {info.cores} cores, {day}",
            args.partitions, run.model_rate):
        text += f"\n![jobs/s against replicas]({png.name})\n"
    out.write_text(text)
    print(text)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
