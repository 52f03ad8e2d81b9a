"""The local broker's CPU while a service runs saturated, burst by burst: its JIT compilers against the rest.

    .venv/bin/python bench/broker_cpu.py --model recsys --bursts 12 --jobs 12000
    AIAAS_KAFKA_JVM_OPTS=-XX:+UseG1GC .venv/bin/python bench/broker_cpu.py --model recsys   # tiered JIT (C1 + C2)

Starts a fresh broker with `infra/kafka/kafka.sh` (its JVM options from AIAAS_KAFKA_JVM_OPTS, as kafka.sh reads
them), builds the model, runs `python -m aiaas.<model>` and the raw load generator of bench/load.py, measures the
broker idle for 8 s, then sends `--bursts` bursts of `--jobs` jobs one after the other. Per burst it prints the
service's jobs/s and the CPU (in cores, from /proc/<pid>/task/*/stat) of the broker's JIT compiler threads, of
the rest of the broker, of the service and of the load generator: on a 2-core machine every core-share the broker
takes is one the model does not get.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.registry.store import Registry
from aiaas.settings import KafkaSettings
from bench.load import RawLoad, burst, cycling
from bench.procs import (
    ChildProcess,
    LocalBroker,
    broker_jvm_opts,
    cpu_seconds,
    service_env,
    thread_cpu_seconds,
)
from bench.run import POOL, log, prepare_topics
from bench.workloads import MODELS, built_model_and_broker, payloads

__all__ = ["main"]


def _jit_and_rest(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]) -> tuple[float, float]:
    """CPU seconds of the JVM's compiler threads ("C1 CompilerThre", "C2 CompilerThre") and of all its other threads."""
    jit = rest = 0.0
    for key, seconds in after.items():
        used = seconds - before.get(key, 0.0)
        if "CompilerThre" in key[1]:
            jit += used
        else:
            rest += used
    return jit, rest


async def _measure(args: argparse.Namespace, tmp: Path, broker: LocalBroker, registry: Registry) -> list[str]:
    prefix = f"brokercpu-{uuid.uuid4().hex[:6]}"
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix)
    await prepare_topics(kafka, args.model)
    service = ChildProcess(["-m", f"aiaas.{args.model}"], service_env(broker.bootstrap, prefix, tmp / "home"),
                           tmp / "service.log").start()
    load = RawLoad(kafka, args.model)
    await load.start()
    take = cycling(payloads(args.model, POOL, registry, seed=2))
    assert broker.pid is not None
    pids = {"service": service.pid, "load generator": os.getpid()}
    lines = ["| burst | jobs/s | broker JIT cores | broker other cores | service cores | load generator cores |",
             "|---:|---:|---:|---:|---:|---:|"]

    def snapshot() -> tuple[float, dict, dict[str, float]]:
        return time.monotonic(), thread_cpu_seconds(broker.pid), {name: cpu_seconds(pid) for name, pid in pids.items()}

    def row(label: str, jobs_per_s: str, before: tuple, after: tuple) -> str:
        (t0, b0, p0), (t1, b1, p1) = before, after
        seconds = t1 - t0
        jit, rest = _jit_and_rest(b0, b1)
        return (f"| {label} | {jobs_per_s} | {jit / seconds:.3f} | {rest / seconds:.3f} | "
                f"{(p1['service'] - p0['service']) / seconds:.2f} | "
                f"{(p1['load generator'] - p0['load generator']) / seconds:.3f} |")

    try:
        await burst(load, take(200))  # the service's first batch (model warm-up), not measured
        before = snapshot()
        await asyncio.sleep(8)
        lines.append(row("idle (8 s)", "–", before, snapshot()))
        for i in range(1, args.bursts + 1):
            before = snapshot()
            done = await burst(load, take(args.jobs))
            lines.append(row(str(i), f"{done.jobs_per_s:,.0f}", before, snapshot()))
            log(lines[-1])
    finally:
        await load.stop()
        service.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="recsys")
    parser.add_argument("--bursts", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=12000, help="jobs per burst")
    parser.add_argument("--port", type=int, default=29892)
    args = parser.parse_args()
    log(f"building {args.model}")
    with built_model_and_broker(args.model, args.port, "aiaas-brokercpu-") as (tmp, broker, registry):
        log(f"broker started: CPU {cpu_seconds(broker.pid or 0):.1f} s so far")
        lines = asyncio.run(_measure(args, tmp, broker, registry))
    print(f"{args.model}: {args.bursts} bursts of {args.jobs:,} jobs, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"broker JVM options: {broker_jvm_opts()}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
