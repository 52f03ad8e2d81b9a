"""What the broker spends on a consumer's offset commits: a commit per batch against commits at most every 100 ms.

    .venv/bin/python bench/commit_cost.py                        # one local broker, 100 jobs/s
    .venv/bin/python bench/commit_cost.py --target cluster       # three local nodes, topics replicated 3 times

A synthetic service-like mix, no model: a producer publishes jobs at `--rate` (linger 2 ms, acks=all, idempotent, as
the load generator's); a consumer group takes up to 32 at a time, produces one result for each and commits, either
after every batch it took (A) or at most every 100 ms (B: the services' default `COMMIT_INTERVAL_MS`). A and B run in
alternating rounds of `--seconds` on their own topics of the same broker(s), so both see the same minutes of the
machine; each round's figure is the CPU the broker processes used per job published. Starts its own broker (port
29472) or cluster (29452, 29457, 29462) and stops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.procs import LocalBroker, cpu_seconds
from tests.faults.cluster import LocalCluster

SIDES = (("A: a commit per batch", "a", 0.0), ("B: at most every 100 ms", "b", 0.1))


async def one_round(bootstrap: str, pids: list[int], topic: str, interval_s: float, rate: float,
                    seconds: float) -> tuple[float, float]:
    """(broker CPU µs per job, commits per second) over one round on `topic`."""
    jobs = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks="all", enable_idempotence=True)
    results = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"commit-cost-{topic}",
                                enable_auto_commit=False, fetch_max_wait_ms=50, auto_offset_reset="latest")
    for client in (jobs, results, consumer):
        await client.start()
    while not consumer.assignment():
        await asyncio.sleep(0.1)
    await consumer.seek_to_end()
    stop, commits, pending, last = asyncio.Event(), 0, {}, 0.0

    async def serve() -> None:
        nonlocal commits, last
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=100, max_records=32)).items():
                sent = [await results.send(f"{topic}-results", r.value[:200], key=r.key) for r in records]
                await asyncio.gather(*sent)
                pending[tp] = records[-1].offset + 1
            if pending and time.monotonic() - last >= interval_s:
                last, offsets = time.monotonic(), dict(pending)
                pending.clear()
                await consumer.commit(offsets)
                commits += 1

    task = asyncio.create_task(serve())
    await asyncio.sleep(1)
    count, before, committed = int(rate * seconds), sum(cpu_seconds(p) for p in pids), commits
    started = time.perf_counter()
    for i in range(count):
        if (wait := started + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        await jobs.send(topic, b"x" * 600, key=str(i).encode())
    elapsed = time.perf_counter() - started
    used, made = sum(cpu_seconds(p) for p in pids) - before, commits - committed
    stop.set()
    await asyncio.gather(task, return_exceptions=True)
    for client in (jobs, results, consumer):
        await client.stop()
    return used / count * 1e6, made / elapsed


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="aiaas-commit-cost-"))
    target: LocalBroker | LocalCluster
    if args.target == "cluster":
        cluster = LocalCluster(29452, work / "cluster")
        await cluster.start_async()
        target, pids, replicas = cluster, [cluster.pid(n) for n in (1, 2, 3)], 3
    else:
        broker = LocalBroker(29472, work / "broker")
        await broker.start_async()
        target, pids, replicas = broker, [broker.pid], 1
    try:
        known = [p for p in pids if p is not None]
        admin = AIOKafkaAdminClient(bootstrap_servers=target.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(t, 3, replicas) for _, side, _ in SIDES for t in (side, f"{side}-results")])
        await admin.close()
        for _, side, interval in SIDES:  # warm-up, not reported
            await one_round(target.bootstrap, known, side, interval, args.rate, args.seconds)
        rounds: dict[str, list[float]] = {name: [] for name, _, _ in SIDES}
        for n in range(args.rounds):
            for name, side, interval in (SIDES if n % 2 == 0 else SIDES[::-1]):
                per_job, per_s = await one_round(target.bootstrap, known, side, interval, args.rate, args.seconds)
                rounds[name].append(per_job)
                print(f"round {n + 1}, {name}: broker CPU {per_job:,.0f} µs per job, {per_s:.0f} commits/s", flush=True)
        a, b = rounds[SIDES[0][0]], rounds[SIDES[1][0]]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(f"\n{args.target}, {args.rate:g} jobs/s: broker CPU per job A {statistics.median(a):,.0f} µs, "
              f"B {statistics.median(b):,.0f} µs; B/A per round " + ", ".join(f"{r:.2f}" for r in ratios)
              + f"; median {statistics.median(ratios):.2f}")
    finally:
        await target.stop_async()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("broker", "cluster"), default="broker")
    parser.add_argument("--rate", type=float, default=100.0, help="jobs published per second")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each round")
    asyncio.run(main(parser.parse_args()))
