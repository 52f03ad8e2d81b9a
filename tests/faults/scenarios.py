"""The six fault scenarios, and how one of them runs in one delivery mode.

Every run gets fresh topics (its own prefix), a fresh service consumer group and reader group,
starts worker `w1` and the results reader, publishes N vision jobs at a fixed rate while its
faults happen, waits until every job has a result (or nothing moves for `stall_s`), lets the
reader catch up, stops everything with SIGTERM, and hands the topics to the checker.

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

from aiaas.settings import KafkaSettings
from aiaas.topics import ensure_topics, service_topics

from .check import Check, check, read_received
from .load import Published, Publisher, good_jobs, hostile_messages, interleave
from .monitor import Monitor
from .procs import Broker, Child, base_env

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

    scenario: "Scenario"
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


class Run:
    """One scenario in one mode: its topics, processes, monitor and notes."""

    def __init__(self, scenario: "Scenario", mode: str, opts: Options, broker: Broker) -> None:
        self.scenario, self.mode, self.opts, self.broker = scenario, mode, opts, broker
        self.prefix = f"f{scenario.number}{mode[0]}{uuid.uuid4().hex[:8]}"
        self.kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=self.prefix)
        self.dir = opts.workdir / f"s{scenario.number}-{mode}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(f"{opts.seed}-{scenario.number}-{mode}")
        self.env = base_env(broker.bootstrap, self.prefix, opts.home)
        self.workers: dict[str, Child] = {}
        self.reader = Child("reader", ["-m", "tests.faults.reader", "--group", f"{self.prefix}.reader",
                                       "--dir", str(self.dir)], self.env, self.dir / "reader.log")
        self.monitor: Monitor | None = None
        self.notes: list[str] = []
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        """Record what happened (the report's details), with the time since the run started."""
        self.notes.append(f"[{time.monotonic() - self.started:5.1f} s] {text}")

    def worker(self, name: str) -> Child:
        """Service instance `name` (its own instance id; the same one again when restarted)."""
        if name not in self.workers:
            env = self.env | {"AIAAS_VISION_DELIVERY": self.mode, "AIAAS_VISION_INSTANCE_ID": name}
            self.workers[name] = Child(name, ["-m", "aiaas.vision"], env, self.dir / f"{name}.log")
        return self.workers[name]

    async def start_worker(self, name: str) -> Child:
        """Start (or restart) service instance `name` and wait until it consumes."""
        worker = self.worker(name)
        await worker.start()
        return worker

    def children(self) -> list[Child]:
        """Every process of this run."""
        return [*self.workers.values(), self.reader]

    def received(self) -> Counter:
        """What the reader's application has processed so far (its lines)."""
        return read_received(self.dir / "received.txt")

    def marked_seen(self) -> set[str]:
        """The job ids in the reader's seen file (marked just before each result is handed over)."""
        return set(read_received(self.dir / "seen.ids"))

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
    await run.broker.stop()
    stopped = time.monotonic()
    away = run.rng.uniform(2, 5)
    await asyncio.sleep(away)
    await run.broker.start()
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
            await child.start()
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
        await run.reader.start()
        await run.reader_past(handed)
        run.note(f"reader resumed: handing over again {time.monotonic() - started:.1f} s after its restart")
        floor = handed / run.opts.jobs + 0.05


async def no_fault(run: Run) -> None:
    """6: nothing breaks; the bad inputs are among the jobs."""


@dataclass(frozen=True)
class Scenario:
    """A numbered fault scenario."""

    number: int
    name: str
    faults: Callable[[Run], Awaitable[None]]
    hostile: bool = False


SCENARIOS = {s.number: s for s in (
    Scenario(1, "kill -9 worker ×3", kill_worker),
    Scenario(2, "SIGTERM worker", sigterm_worker),
    Scenario(3, "broker restart", restart_broker),
    Scenario(4, "2nd worker in, out", second_worker),
    Scenario(5, "kill -9 reader ×2", kill_reader),
    Scenario(6, "bad inputs interleaved", no_fault, hostile=True),
)}


# -- one run ---------------------------------------------------------------------------------

async def run_one(scenario: Scenario, mode: str, opts: Options, broker: Broker) -> Row:
    """Run `scenario` in `mode`; never raises for a scenario's failure (the row carries it)."""
    run = Run(scenario, mode, opts, broker)
    row = Row(scenario, mode)
    try:
        good = good_jobs(run.prefix, opts.jobs)
        bad = hostile_messages(f"{run.prefix}-bad") if scenario.hostile else []
        row.bad_sent = len(bad)
        messages = interleave(good, bad) if bad else good
        good_ids = {m.key.decode() for m in good}
        sends = Counter(m.key.decode(errors="replace") for m in messages if m.key)
        await ensure_topics(run.kafka, service_topics("vision", run.kafka))
        run.monitor = Monitor(run.kafka, good_ids)
        await run.monitor.start()
        await run.start_worker("w1")
        row.ready_line = next((line for line in run.workers["w1"].log_text().splitlines() if " ready: " in line), "")
        await run.reader.start()
        publisher = Publisher(run.kafka)
        first_publish = time.monotonic()
        publishing = asyncio.create_task(publisher.run(messages, opts.rate))
        publishing.add_done_callback(lambda task: _note_published(run, task))
        try:
            await scenario.faults(run)
            published = await publishing
        finally:
            publishing.cancel()
        if not await run.monitor.complete(len(bad), opts.stall_s):
            run.note(f"gave up waiting: no new result for {opts.stall_s:.0f} s with {run.monitor.percent()} answered, "
                     f"{run.monitor.dlq} dead letters")
        await _reader_catch_up(run)
        row.wall_s = time.monotonic() - first_publish
        await _stop(run)
        row.check = await check(run.kafka, good_ids, sends, published.good_acked, run.dir / "received.txt")
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row.error = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"[:2000]
    finally:
        for child in run.children():
            child.stop_now()
        if run.monitor is not None:
            await run.monitor.stop()
        row.notes = run.notes + _log_findings(run)
        row.reader_kills = sum(1 for how, _ in run.reader.exits if how == "kill -9")
    return row


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
        if not run.reader.alive:
            run.note(f"FINDING: the reader exited by itself (status {run.reader.unexpected_exits()}); started again")
            await run.reader.start()
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
