"""The fault scenarios, and how one of them runs in one delivery mode.

Every run gets fresh topics (its own prefix, every topic created here: the broker creates none by
itself), a fresh service consumer group and reader group, starts worker `w1` and the results reader
(one per tenant in the tenant flood), publishes N vision jobs at a fixed rate while its faults
happen, waits until every job has a result (or nothing moves for `stall_s`), lets the reader catch
up, stops everything with SIGTERM, and hands the topics to the checker. Throughout, a worker that
exits without being told to is noted, counted and started again (as a supervisor would).

Faults are placed at random points of the stream (seeded): "at 37 %" means once 37 % of the
good jobs had a result in the results topic.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiaas.contract.topics import ModelTopics, service_topics
from aiaas.kafka.admin import ensure_topics
from aiaas.settings import KafkaSettings
from tests.harness import ChildProcess, LocalBroker, service_env

from .check import Check, check, read_received
from .cluster import LocalCluster
from .load import (
    Message,
    Published,
    Publisher,
    bad_reply_to,
    good_jobs,
    hostile_headers,
    hostile_messages,
    interleave,
)
from .monitor import Monitor

__all__ = ["MODES", "SCENARIOS", "Scenario", "Options", "Row", "run_one"]

MODES = ("at-least-once", "exactly-once")


@dataclass
class Options:
    """What every scenario run shares."""

    jobs: int
    """Good jobs per scenario run (N)."""
    home: Path
    """AIAAS_HOME with a vision model in its registry."""
    workdir: Path
    """Logs, reader files, broker state."""
    rate: float = 500.0
    """Jobs published per second."""
    seed: int = 0
    stall_s: float = 60.0
    """Give up waiting for results after this long without a new one."""


@dataclass
class Row:
    """One scenario in one mode: the checker's counts and what happened."""

    scenario: Scenario
    mode: str
    check: Check | None = None
    wall_s: float = 0.0
    bad_sent: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    ready_line: str = ""
    """The first worker's ready line (says what it serves, and how)."""
    reader_kills: int = 0
    """How many times the results reader was killed with kill -9."""
    dlq_expected: int = 0
    """Bad inputs that must end as dead letters."""
    input_restarts: int = 0
    """Worker exits the scenario did not cause (not its kill -9 or SIGTERM): each was started again."""
    rewinds: int | None = None
    """Rewinds the workers reported in their `service stopped` lines (None: no worker printed one)."""
    latency: dict[str, list[float]] = field(default_factory=dict)
    """The tenant flood: bob's latencies (ms) alone and during alice's flood."""


class Run:
    """One scenario in one mode: its topics, processes, monitor and notes."""

    def __init__(self, scenario: Scenario, mode: str, opts: Options, broker: LocalBroker | LocalCluster) -> None:
        self.scenario, self.mode, self.opts, self.broker = scenario, mode, opts, broker
        self.prefix = f"f{scenario.number}{mode[0]}{uuid.uuid4().hex[:8]}"
        replicas = getattr(broker, "replication_factor", 1)
        self.kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=self.prefix,
                                   replication_factor=replicas)
        self.dir = opts.workdir / f"s{scenario.number}-{mode}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(f"{opts.seed}-{scenario.number}-{mode}")
        self.env = service_env(broker.bootstrap, self.prefix, opts.home, export_traces=False,
                               extra={"AIAAS_KAFKA_REPLICATION_FACTOR": str(replicas)})
        self.topics = ModelTopics.of("vision", self.prefix)
        self.tenants = scenario.tenants
        self.infer_topics = [self.topics.infer, *(self.topics.tenant_infer(t) for t in self.tenants)]
        self.results_topics = [self.topics.results, *(self.topics.tenant_results(t) for t in self.tenants)]
        self.workers: dict[str, ChildProcess] = {}
        self.readers = [self._reader(tenant) for tenant in (self.tenants or (None,))]
        self.reader = self.readers[0]
        self.monitor: Monitor | None = None
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.extra_acked = 0
        """Good jobs acknowledged to publishers other than the run's own (alice's flood)."""
        self.publisher: Publisher | None = None
        self.latency: dict[str, list[float]] = {}
        """The tenant flood: bob's latencies (ms) by phase."""

    def _reader(self, tenant: str | None) -> ChildProcess:
        """The results reader of the shared results topic, or of `tenant`'s (its own group, folder and seen file)."""
        folder = self.dir / tenant if tenant else self.dir
        name = f"reader-{tenant}" if tenant else "reader"
        env = self.env | ({"AIAAS_KAFKA_TENANT": tenant} if tenant else {})
        return ChildProcess(["-m", "tests.faults.reader", "--group", f"{self.prefix}.{name}", "--dir", str(folder)],
                            env, self.dir / f"{name}.log", name=name)

    def topics_needed(self) -> list[str]:
        """Every topic this run's processes use (the broker creates none by itself)."""
        extra = ([self.topics.tenant_results(t) for t in self.tenants]
                 + [self.topics.tenant_infer(t) for t in self.tenants])
        return service_topics("vision", self.kafka) + extra + [t.format(prefix=self.prefix)
                                                               for t in self.scenario.extra_topics]

    def note(self, text: str) -> None:
        """Record what happened (the report's details), with the time since the run started."""
        self.notes.append(f"[{time.monotonic() - self.started:5.1f} s] {text}")

    def worker(self, name: str) -> ChildProcess:
        """Service instance `name` (its own instance id; the same one again when restarted)."""
        if name not in self.workers:
            env = self.env | dict(self.scenario.worker_env) | {"AIAAS_VISION_DELIVERY": self.mode,
                                                                "AIAAS_VISION_INSTANCE_ID": name}
            self.workers[name] = ChildProcess(["-m", self.scenario.module], env, self.dir / f"{name}.log", name=name)
        return self.workers[name]

    async def start_worker(self, name: str) -> ChildProcess:
        """Start (or restart) service instance `name` and wait until it consumes."""
        worker = self.worker(name)
        await worker.start_async()
        return worker

    def children(self) -> list[ChildProcess]:
        """Every process of this run."""
        return [*self.workers.values(), *self.readers]

    def _reader_dirs(self) -> list[Path]:
        return [self.dir / t for t in self.tenants] or [self.dir]

    def received(self) -> Counter:
        """What the readers' application has processed so far (their lines)."""
        return sum((read_received(folder / "received.txt") for folder in self._reader_dirs()), Counter())

    def marked_seen(self) -> set[str]:
        """The job ids in the readers' seen files (marked just before each result is handed over)."""
        return set().union(*(read_received(folder / "seen.ids") for folder in self._reader_dirs()))

    async def at(self, fraction: float) -> None:
        """Wait until `fraction` of the good jobs are answered (at most 97 %: a fault lands before the end)."""
        assert self.monitor is not None
        fraction = min(fraction, 0.97)
        if not await self.monitor.reach(fraction, self.opts.stall_s):
            self.note(f"the stream stalled before {fraction:.0%} ({self.monitor.percent()} answered)")

    async def reader_at(self, fraction: float) -> None:
        """Wait until the reader has handed over `fraction` of the good jobs' results (at most 97 %)."""
        await self.reader_past(int(min(fraction, 0.97) * self.opts.jobs) - 1)

    async def reader_past(self, handed: int) -> None:
        """Wait until the reader has handed over more than `handed` results."""
        moved_at, count = time.monotonic(), 0
        while (now := len(self.received())) <= handed:
            if now != count:
                count, moved_at = now, time.monotonic()
            elif time.monotonic() - moved_at > self.opts.stall_s:
                self.note(f"the reader stalled at {now} results")
                return
            await asyncio.sleep(0.02)

    def progress(self) -> float:
        """Share of the good jobs answered so far."""
        assert self.monitor is not None
        return self.monitor.progress

    def percent(self) -> str:
        """How far the stream is, for a note."""
        assert self.monitor is not None
        return self.monitor.percent()


# -- the faults ------------------------------------------------------------------------------

def _points(rng: random.Random, k: int, low: float, high: float) -> list[float]:
    """k random points in [low, high], one in each k-th of it (so they never bunch up)."""
    width = (high - low) / k
    return [low + width * (i + rng.random()) for i in range(k)]


async def kill_worker(run: Run) -> None:
    """1: kill -9 the worker at three random points; restart it at once with the same instance id.

    Each kill after the first also waits until the restarted worker answered 5 % more of the jobs,
    so it kills a worker that is working, not one that has just started.
    """
    floor = 0.0
    for fraction in _points(run.rng, 3, 0.1, 0.9):
        await run.at(max(fraction, floor))
        run.workers["w1"].kill()
        run.note(f"kill -9 w1 at {run.percent()}")
        started = time.monotonic()
        await run.start_worker("w1")
        run.note(f"w1 restarted (ready after {time.monotonic() - started:.1f} s, at {run.percent()})")
        floor = run.progress() + 0.05


async def sigterm_worker(run: Run) -> None:
    """2: SIGTERM the worker mid-stream (it drains and exits 0), then start it again."""
    await run.at(run.rng.uniform(0.3, 0.7))
    at, started = run.percent(), time.monotonic()
    status = await run.workers["w1"].terminate()
    run.note(f"SIGTERM w1 at {at}: exited with status {status} after {time.monotonic() - started:.1f} s")
    await run.start_worker("w1")
    run.note("w1 restarted")


async def restart_broker(run: Run) -> None:
    """3: stop the broker mid-stream and start it again (same data); the processes should ride through."""
    assert run.monitor is not None
    await run.at(run.rng.uniform(0.3, 0.7))
    at, started = run.percent(), time.monotonic()
    await run.broker.stop_async()
    stopped = time.monotonic()
    away = run.rng.uniform(2, 5)
    await asyncio.sleep(away)
    await run.broker.start_async()
    run.note(f"broker stopped at {at} (controlled shutdown {stopped - started:.1f} s), down {away:.1f} s more, "
             f"answering again after {time.monotonic() - started:.1f} s in all")
    moved, deadline = False, time.monotonic() + run.opts.stall_s
    while time.monotonic() < deadline and all(child.alive for child in run.children()):
        if await run.monitor.advance(timeout=0.5):
            moved = True
            break
    for child in run.children():
        if not child.alive:
            run.note(f"FINDING: {child.name} exited by itself (status {child.unexpected_exits()}) around the broker "
                     "restart; started again")
            await child.start_async()
    if moved:
        run.note(f"results flowing again {time.monotonic() - started:.1f} s after the stop; "
                 + ("every process rode through" if not any(c.unexpected_exits() for c in run.children())
                    else "after restarting the processes that died"))
    elif run.monitor.progress < 1:
        run.note(f"FINDING: no new result for {run.opts.stall_s:.0f} s after the broker came back although w1 "
                 "runs; restarting w1")
        await run.workers["w1"].terminate()
        await run.start_worker("w1")


async def second_worker(run: Run) -> None:
    """4: start a second worker (its own instance id) mid-stream, SIGTERM it later (two rebalances)."""
    await run.at(run.rng.uniform(0.15, 0.35))
    at = run.percent()
    await run.start_worker("w2")
    run.note(f"w2 started at {at}, consuming at {run.percent()}")
    await run.at(max(run.rng.uniform(0.6, 0.8), run.progress() + 0.1))  # w2 takes part for a while
    at, started = run.percent(), time.monotonic()
    status = await run.workers["w2"].terminate()
    run.note(f"SIGTERM w2 at {at}: exited with status {status} after {time.monotonic() - started:.1f} s")


async def kill_reader(run: Run) -> None:
    """5: kill -9 the results reader at two random points of its own progress; resume it (same group and seen file).

    The second kill waits until the resumed reader handed over 5 % more, so it kills a reader that is reading.
    """
    floor = 0.0
    for fraction in _points(run.rng, 2, 0.15, 0.85):
        await run.reader_at(max(fraction, floor))
        run.reader.kill()
        handed = len(run.received())
        run.note(f"kill -9 reader after it handed over {handed} results ({run.percent()} of the jobs answered)")
        started = time.monotonic()
        await run.reader.start_async()
        await run.reader_past(handed)
        run.note(f"reader resumed: handing over again {time.monotonic() - started:.1f} s after its restart")
        floor = handed / run.opts.jobs + 0.05


async def no_fault(run: Run) -> None:
    """6, 7, 8: nothing breaks; the bad inputs are among the jobs."""


_FROZEN_SETTINGS = {"AIAAS_VISION_SESSION_TIMEOUT_MS": "6000", "AIAAS_VISION_HEARTBEAT_INTERVAL_MS": "2000",
                    "AIAAS_VISION_MAX_POLL_INTERVAL_MS": "10000"}
"""Scenario 10's workers: the broker's shortest session (group.min.session.timeout.ms, 6 s) and a short poll timeout."""


async def freeze_worker(run: Run) -> None:
    """10: with w2 in the group (started with the stream), SIGSTOP w1 past its session and poll timeouts, then
    SIGCONT it.

    The group drops w1 once its session expires and gives its partitions to w2; w1 wakes up still holding the
    batches it had taken, as a zombie: its late results, commits and transactions must not lose or repeat a job.
    """
    await run.start_worker("w2")  # from the start: it must be in the group, consuming, before w1 freezes
    run.note(f"w2 started, consuming at {run.percent()}")
    await run.at(max(run.rng.uniform(0.3, 0.5), run.progress() + 0.05))
    frozen_s = max(int(_FROZEN_SETTINGS["AIAAS_VISION_SESSION_TIMEOUT_MS"]),
                   int(_FROZEN_SETTINGS["AIAAS_VISION_MAX_POLL_INTERVAL_MS"])) / 1000 + 4
    at, answered = run.percent(), len(run.monitor.answered)
    run.workers["w1"].freeze()
    run.note(f"SIGSTOP w1 at {at} for {frozen_s:.0f} s (session timeout 6 s, poll timeout 10 s)")
    await asyncio.sleep(frozen_s)
    run.workers["w1"].thaw()
    run.note(f"SIGCONT w1 at {run.percent()}: {len(run.monitor.answered) - answered:,} jobs answered while it was "
             "frozen")


_LEADER_KILL_RATE = 200.0
"""Scenario 12's jobs/s: a node's kill, restart and catching up take tens of seconds on a small machine; at 200/s
(50 s for N = 10,000) both kills land while jobs are still coming in."""


async def kill_leaders(run: Run) -> None:
    """12 (3-node cluster): kill -9 the node that leads an infer partition, start it again; once every replica is
    back in sync, kill -9 the node that leads a results partition then, and start it again.

    Each killed node leads other partitions too (of the infer and results topics, of the group's offsets and of
    the transaction state, which makes it a group or transaction coordinator): the note says which. Its partitions
    have no leader until the controller fences it (broker.session.timeout.ms, 9 s) or it is back; with 3 replicas
    and min.insync.replicas=2 no acknowledged record may be lost.
    """
    cluster = run.broker
    assert isinstance(cluster, LocalCluster), "scenario 12 needs the 3-node cluster"
    watched = [*run.infer_topics, *run.results_topics, run.topics.retry, "__consumer_offsets", "__transaction_state"]
    floor = 0.0
    for fraction, (what, topic) in zip(_points(run.rng, 2, 0.15, 0.85),
                                       (("infer", run.topics.infer), ("results", run.topics.results)), strict=True):
        await run.at(max(fraction, floor))
        partition = run.rng.randrange(run.kafka.partitions)
        node = await cluster.leader_of(topic, partition)
        led = await cluster.led_by(node, watched)
        at, started = run.percent(), time.monotonic()
        await cluster.kill_node(node)
        run.note(f"kill -9 node {node}, leader of {what} partition {partition}, at {at}; it led "
                 + ", ".join(name.removeprefix(f"{run.prefix}.") for name in led))
        down = run.rng.uniform(3, 8)
        await asyncio.sleep(down)
        await cluster.start_node(node)
        run.note(f"node {node} started again after {down:.1f} s down; answering {time.monotonic() - started:.1f} s "
                 f"after the kill, at {run.percent()}")
        if await cluster.wait_in_sync(watched, timeout=run.opts.stall_s * 2):
            run.note(f"every replica in sync again {time.monotonic() - started:.1f} s after the kill, "
                     f"at {run.percent()}")
        else:
            run.note(f"FINDING: replicas still out of sync {time.monotonic() - started:.1f} s after the kill")
        floor = run.progress() + 0.05


_BOB_RATE = 50.0
"""Tenant flood: bob's jobs/s (open loop)."""
_SOLO_S = 8.0
"""Tenant flood: how long bob runs alone before alice floods."""


_FLOOD_TIMES_N = 3
"""Tenant flood: alice publishes this many times N jobs."""


def _bob_jobs(run: Run) -> list[Message]:
    """Bob's stream: his solo phase, then long enough for alice's flood to drain (at 1,500/s or more)."""
    count = int(_BOB_RATE * (_SOLO_S + max(10.0, _FLOOD_TIMES_N * run.opts.jobs / 1500)))
    return good_jobs(f"{run.prefix}-bob", count, topic=run.topics.tenant_infer("bob"))


def _alice_ids(run: Run) -> list[str]:
    from bench.tenant_flood import flood_job_ids

    return flood_job_ids(f"{run.prefix}-alice", _FLOOD_TIMES_N * run.opts.jobs)


async def tenant_flood(run: Run) -> None:
    """11: bob publishes at 50/s; after 8 s alice publishes 3 × N jobs as fast as her producer takes them.

    Alice runs in a process of her own (`bench/tenant_flood.py flood`), so her publishing does not delay bob's
    publisher or the monitor that timestamps bob's results. Bob's latency = publish start → first result seen.
    """
    assert run.monitor is not None and run.publisher is not None
    await asyncio.sleep(_SOLO_S)
    ids = set(_alice_ids(run))
    alice = ChildProcess(["-m", "bench.tenant_flood", "flood", "--topic", run.topics.tenant_infer("alice"),
                          "--prefix", f"{run.prefix}-alice", "--count", str(len(ids))],
                         run.env, run.dir / "alice.log", name="alice", marker="alice flood ready: ")
    await alice.start_async()
    run.note(f"alice floods {len(ids):,} jobs (bob at {run.percent()})")
    moved_at, count = time.monotonic(), -1
    while not ids <= run.monitor.answered:
        if (now := len(ids & run.monitor.answered)) != count:
            count, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > run.opts.stall_s:
            run.note(f"alice's flood stalled at {now:,} results")
            break
        await asyncio.sleep(0.05)
    status = await _exit_of(alice)
    done = next((line for line in alice.log_text().splitlines() if "alice flood done: " in line), "")
    run.extra_acked += int(done.split("done: ", 1)[1].split()[0]) if done else 0
    flood_from = float(done.split("first send at ", 1)[1].split()[0]) if done else time.time()
    flood_until = max((run.monitor.first_seen.get(i, 0.0) for i in ids), default=flood_from)
    run.note(f"alice's process exited with {status}: {done.split(': ', 1)[-1] or 'no done line'}; her last result "
             f"{flood_until - flood_from:.1f} s after her first publish")
    sent_at, seen = run.publisher.sent_at, run.monitor.first_seen
    bob = {key.decode(): at for key, at in sent_at.items() if key}
    lat = lambda lo, hi: [(seen[j] - t) * 1000 for j, t in bob.items() if lo <= t < hi and j in seen]  # noqa: E731
    # Alone: from bob's first result on (the service logs "ready" before the group has assigned it partitions).
    answering_from = min((seen[j] for j in bob if j in seen), default=flood_from)
    run.latency = {"alone": lat(answering_from, flood_from), "during the flood": lat(flood_from, flood_until)}


async def _exit_of(child: ChildProcess, timeout: float = 120) -> int | None:
    """Wait for a child that ends by itself (alice's flood) and reap it."""
    deadline = time.monotonic() + timeout
    while child.alive and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if child.alive:
        await child.terminate()
    return child.proc.returncode if child.proc else None


@dataclass(frozen=True)
class Scenario:
    """A numbered fault scenario."""

    number: int
    name: str
    faults: Callable[[Run], Awaitable[None]]
    bad: Callable[[Run], list[Message]] | None = None
    """The bad inputs spread between the good jobs."""
    module: str = "aiaas.vision"
    """What each worker runs (`python -m`)."""
    worker_env: tuple[tuple[str, str], ...] = ()
    """Settings of every worker of the scenario."""
    fail_every: int = 0
    """Every k-th good job fails its first model call in each worker (with `tests.integration.flaky_vision`)."""
    all_ok: bool = False
    """Every good job must end `ok` (no error result): retried failures succeed."""
    no_rewinds: bool = False
    """The workers must report 0 rewinds: the bad inputs are final outcomes, not publish failures."""
    tenants: tuple[str, ...] = ()
    """Good jobs go to these tenants' infer topics (`jobs`); one results reader per tenant."""
    jobs: Callable[[Run], list[Message]] | None = None
    """The good jobs the run publishes at `rate` (default: N jobs to the shared infer topic)."""
    rate: float | None = None
    """Jobs/s of the run's publisher (default: --rate)."""
    extra_good: Callable[[Run], list[str]] | None = None
    """Good job ids published by the scenario itself (alice's flood): counted in lost and sent."""
    extra_topics: tuple[str, ...] = ()
    """More topics to create (`{prefix}` is the run's)."""
    cluster: bool = False
    """Runs on the local 3-node cluster (`tests/faults/cluster.py`) instead of the single node."""

    @property
    def hostile(self) -> bool:
        """Bad inputs are among the jobs."""
        return self.bad is not None


SCENARIOS = {s.number: s for s in (
    Scenario(1, "kill -9 worker ×3", kill_worker),
    Scenario(2, "SIGTERM worker", sigterm_worker),
    Scenario(3, "broker restart", restart_broker),
    Scenario(4, "2nd worker in, out", second_worker),
    Scenario(5, "kill -9 reader ×2", kill_reader),
    Scenario(6, "bad inputs interleaved", no_fault, bad=lambda run: hostile_messages(f"{run.prefix}-bad")),
    Scenario(7, "hostile headers interleaved", no_fault, no_rewinds=True,
             bad=lambda run: hostile_headers(f"{run.prefix}-hh", run.topics.retry)),
    Scenario(8, "refused reply_to interleaved", no_fault, no_rewinds=True,
             bad=lambda run: bad_reply_to(f"{run.prefix}-rt", run.prefix), extra_topics=("{prefix}.text.results",)),
    Scenario(9, "retries in flight, 2nd worker in, out", second_worker, module="tests.integration.flaky_vision",
             fail_every=20, all_ok=True, worker_env=(("AIAAS_VISION_RETRY_BACKOFF_MS", "1000"),)),
    Scenario(10, "SIGSTOP worker past its session", freeze_worker, worker_env=tuple(_FROZEN_SETTINGS.items())),
    Scenario(11, "tenant flood", tenant_flood, tenants=("alice", "bob"), jobs=_bob_jobs, rate=_BOB_RATE,
             extra_good=_alice_ids),
    Scenario(12, "kill -9 infer, results leaders (3 nodes)", kill_leaders, cluster=True, rate=_LEADER_KILL_RATE),
)}


# -- one run ---------------------------------------------------------------------------------

async def run_one(scenario: Scenario, mode: str, opts: Options, broker: LocalBroker | LocalCluster) -> Row:
    """Run `scenario` in `mode`; never raises for a scenario's failure (the row carries it)."""
    run = Run(scenario, mode, opts, broker)
    row = Row(scenario, mode)
    supervising: asyncio.Task | None = None
    try:
        good = scenario.jobs(run) if scenario.jobs else good_jobs(run.prefix, opts.jobs, fail_every=scenario.fail_every)
        bad = scenario.bad(run) if scenario.bad else []
        row.bad_sent, row.dlq_expected = len(bad), sum(m.expect_dlq for m in bad)
        messages = interleave(good, bad) if bad else good
        extra = scenario.extra_good(run) if scenario.extra_good else []
        good_ids = {m.key.decode() for m in good} | set(extra)
        sends = Counter(m.key.decode(errors="replace") for m in messages if m.key) + Counter(extra)
        expected = {m.job_id: m.expect_result for m in bad if m.expect_result and m.job_id}
        await ensure_topics(run.kafka, run.topics_needed())
        run.monitor = Monitor(run.kafka, good_ids, run.results_topics)
        await run.monitor.start()
        await run.start_worker("w1")
        row.ready_line = next((line for line in run.workers["w1"].log_text().splitlines() if " ready: " in line), "")
        for reader in run.readers:
            await reader.start_async()
        supervising = asyncio.create_task(_supervise(run))
        run.publisher = publisher = Publisher(run.kafka)
        first_publish = time.monotonic()
        publishing = asyncio.create_task(publisher.run(messages, scenario.rate or opts.rate))
        publishing.add_done_callback(lambda task: _note_published(run, task))
        try:
            await scenario.faults(run)
            published = await publishing
        finally:
            publishing.cancel()
        if not await run.monitor.complete(row.dlq_expected, opts.stall_s):
            run.note(f"gave up waiting: no new result for {opts.stall_s:.0f} s with {run.monitor.percent()} answered, "
                     f"{run.monitor.dlq} dead letters")
        await _reader_catch_up(run)
        row.wall_s = time.monotonic() - first_publish
        supervising.cancel()
        await _stop(run)
        row.check = await check(run.kafka, good_ids, sends, published.good_acked + run.extra_acked, run.received(),
                                infer_topics=run.infer_topics, results_topics=run.results_topics, expected=expected)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row.error = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"[:2000]
    finally:
        if supervising is not None:
            supervising.cancel()
        for child in run.children():
            child.stop(timeout=30)
        if run.monitor is not None:
            await run.monitor.stop()
        row.notes = run.notes + _log_findings(run)
        row.reader_kills = sum(1 for reader in run.readers for how, _ in reader.exits if how == "kill -9")
        row.input_restarts = sum(len(worker.unexpected_exits()) for worker in run.workers.values())
        row.rewinds = _rewinds(run)
        row.latency = run.latency
    return row


async def _supervise(run: Run) -> None:
    """Start again any worker that exited without being told to (counted in `input_restarts`), as Kubernetes would."""
    while True:
        await asyncio.sleep(0.5)
        for worker in list(run.workers.values()):
            if worker.alive or worker.stopping or worker.proc is None:
                continue
            before = len([how for how, _ in worker.exits if how == "by itself"])
            statuses = worker.unexpected_exits()
            if len(statuses) > before:
                run.note(f"FINDING: {worker.name} exited by itself with status {statuses[-1]}; starting it again")
                await worker.start_async()


def _rewinds(run: Run) -> int | None:
    """Rewinds summed over the workers' `service stopped` lines (None when no worker printed one)."""
    found = [int(line.split(" rewinds", 1)[0].rsplit(" ", 1)[-1]) for worker in run.workers.values()
             for line in worker.log_text().splitlines() if " service stopped: " in line and " rewinds" in line]
    return sum(found) if found else None


def _note_published(run: Run, task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    published: Published = task.result()
    run.note(f"publishing done: {published.acked:,} messages in {published.last_at - published.first_at:.1f} s"
             + (f" ({published.resends} sent again; first errors: {'; '.join(published.errors)})"
                if published.resends or published.errors else ""))


async def _reader_catch_up(run: Run) -> None:
    """Wait until the reader handed over every result in the topic (or stopped making progress)."""
    assert run.monitor is not None
    wanted = run.monitor.answered | run.monitor.other_ids
    count, moved_at = -1, time.monotonic()
    while True:
        for reader in run.readers:
            if not reader.alive:
                run.note(f"FINDING: {reader.name} exited by itself (status {reader.unexpected_exits()}); started again")
                await reader.start_async()
        received = run.received()
        if wanted <= received.keys():
            return
        if wanted <= received.keys() | run.marked_seen():
            # Marked seen but never written: a kill -9 between the mark and the write. That result is
            # not handed over again (at most once, for the one in hand): the checker counts it as missed.
            return
        if len(received) != count:
            count, moved_at = len(received), time.monotonic()
        elif time.monotonic() - moved_at > run.opts.stall_s / 2:
            run.note(f"the reader stopped at {len(wanted - received.keys())} results short of the topic")
            return
        await asyncio.sleep(0.1)


async def _stop(run: Run) -> None:
    """SIGTERM the reader and every worker; note any that did not exit 0."""
    for child in run.children():
        for status in child.unexpected_exits():
            run.note(f"FINDING: {child.name} had exited by itself with status {status}")
        if child.alive:
            status = await child.terminate()
            if status != 0:
                run.note(f"FINDING: {child.name} exited with status {status} on SIGTERM")


def _log_findings(run: Run) -> list[str]:
    """Tracebacks and warnings in the processes' logs, and the workers' own counters."""
    found = []
    for child in run.children():
        text = child.log_text()
        lines = text.splitlines()
        tracebacks = text.count("Traceback (most recent call last)")
        problems = [line for line in lines if " ERROR " in line or " WARNING " in line]
        if tracebacks or problems:
            first = problems[0] if problems else ""
            found.append(f"{child.name} log: {tracebacks} tracebacks, {len(problems)} ERROR/WARNING lines"
                         + (f"; first: {first[:300]}" if first else ""))
        found += [f"{child.name}: {line.split(': ', 1)[-1][:300]}" for line in lines if " service stopped: " in line]
    return found
