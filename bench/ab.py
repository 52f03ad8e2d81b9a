"""A/B: two versions of one service, saturated side by side with alternating bursts.

    git worktree add /tmp/base HEAD~1                         # the code to compare against
    .venv/bin/python bench/ab.py --model vision --a /tmp/base # A = that checkout, B = this one
    .venv/bin/python bench/ab.py --model text --b-env AIAAS_TEXT_INTRA_OP_THREADS=1   # same code, a setting
    .venv/bin/python bench/ab.py --model text --a-env AIAAS_TEXT_MODEL_INSTANCES=1 --latency 0.25 0.5 0.75

On a machine whose speed drifts (a VM: up to 2× over minutes here), two runs one after the other
cannot tell a 10 % change from noise. Here both services run at once, each on its own topics, and
are measured in rounds of one burst each (the other idles meanwhile), so every round compares the
same minutes of the machine. The report gives each round's B/A ratio and their median.

A and B are `python -m aiaas.<model>` child processes with tracing on (spans to the local store), as
in bench/run.py; `--a DIR` / `--b DIR` run the `services/` of another checkout (PYTHONPATH), `--a-env` /
`--b-env K=V` set variables for one side only, `--noop A` runs the transport ceiling's no-op model on side A
(`bench/transport.py`). The broker and the model are this checkout's.

Each burst also meters the CPU that the side's service, the broker and this process (the load generator)
used per job, and how many of the machine's cores were busy: where a side's extra cost lands, and whether
the machine was saturated at all (on the 2-core VM a service process is bound by its GIL at ~0.9 cores
while the machine still has idle time, so its CPU per job, not the machine's, sets its throughput).

`--pin` puts both services on the machine's last core and the broker, the load generator and its results readers on
the others (Linux), once they have started: the same measurement without the load generator competing for the
service's core. For services with one intra-op thread (vision, recsys by default): ONNX Runtime sizes its thread pool
for the cores it saw at start.

`--latency SHARE ...` adds latency side by side: after the saturated rounds, each share of A's saturated
throughput is offered to both sides at the same rate, open loop (a fixed schedule, as bench/run.py's latency), in
`--rounds` rounds of alternating `--seconds`-long runs (the other side idles meanwhile; each round starts with the
other side); the report gives each side's median p50/p95/p99 over the rounds and the median of the per-round B/A of
p50, p95 and p99. `--burst N` publishes the open loop's jobs N at a time, at the same mean rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.registry.store import Registry
from aiaas.settings import KafkaSettings
from aiaas.tracing.hops import HOPS
from bench.hop_breakdown import add_hops_once_stored
from bench.load import Burst, OpenLoop, RawLoad, burst, collector_paused, cycling, open_loop, over_rounds, saturate
from bench.procs import (
    MACHINE,
    REPO,
    ChildProcess,
    LocalBroker,
    core_meter,
    pin,
    pin_beside_broker,
    service_env,
    split_cores,
)
from bench.rdkafka import CLIENTS
from bench.report import round_ratios
from bench.run import POOL, log, prepare_topics
from bench.workloads import MODELS, Payload, built_model_and_broker, payloads

__all__ = ["main"]


class _Jobs(Protocol):
    jobs: int


_Measured = TypeVar("_Measured", bound=_Jobs)


class _MeteredLoad:
    """A side's load generator whose bursts and open-loop rounds also record CPU per job of the processes involved."""

    def __init__(self, load: RawLoad, pids: dict[str, int]) -> None:
        self.load, self.pids = load, pids
        self.cpu: list[tuple[Burst, dict[str, float]]] = []
        """Per burst (the pilot and discarded ones too): µs of CPU per job for each of `pids`, and "busy cores" of
        the whole machine. Work a side defers past its burst (the span store's append, every 0.5 s) lands in the
        next."""
        self.open_loop_cpu: list[tuple[float, dict[str, float]]] = []
        """Per open-loop round: its share and the same record (the jobs' preparation and the wait for the last
        results included)."""

    async def start(self) -> None:
        await self.load.start()
        if self.load.reader_pid is not None:
            self.pids["results reader"] = self.load.reader_pid

    async def stop(self) -> None:
        await self.load.stop()

    async def burst(self, payloads: list[Payload]) -> Burst:
        result, used = await self._metered(burst(self.load, payloads))
        self.cpu.append((result, used))
        return result

    async def open_loop(self, payloads: list[Payload], *, rate: float, share: float, burst: int) -> OpenLoop:
        with collector_paused():  # its collection before the loop, outside the metered CPU (as `_burst` does)
            point, used = await self._metered(open_loop(self.load, payloads, rate=rate, share=share, burst=burst))
        self.open_loop_cpu.append((share, used))
        return point

    def of(self, bursts: list[Burst]) -> list[dict[str, float]]:
        """The records of these bursts (the measured rounds: not the pilot, not a discarded round)."""
        return [record for burst_, record in self.cpu if any(burst_ is b for b in bursts)]

    async def _metered(self, work: Awaitable[_Measured]) -> tuple[_Measured, dict[str, float]]:
        since, started = core_meter(self.pids), time.perf_counter()
        result = await work
        elapsed, cores = time.perf_counter() - started, since()
        used = {name: cores[name] * elapsed / result.jobs * 1e6 for name in self.pids if name in cores}
        return result, used | {"busy cores": cores[MACHINE]}


def _side_env(checkout: Path | None, pairs: list[str]) -> dict[str, str]:
    env = {}
    if checkout is not None:
        services = checkout.resolve() / "services"
        if not (services / "aiaas").is_dir():
            raise SystemExit(f"{checkout} has no services/aiaas: give the root of an aiaas checkout")
        env["PYTHONPATH"] = str(services)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


async def _compare(args: argparse.Namespace, tmp: Path, broker: LocalBroker, registry: Registry) -> str:
    run_id = uuid.uuid4().hex[:6]
    sides = {"A": _side_env(args.a, args.a_env), "B": _side_env(args.b, args.b_env)}
    loads, children = [], []
    for side, extra in sides.items():
        prefix = f"ab-{run_id}-{args.model}-{side.lower()}"
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix)
        await prepare_topics(kafka, args.model)
        env = service_env(broker.bootstrap, prefix, tmp / "home", extra)
        command = ["bench/transport.py", "--model", args.model] if side in args.noop else ["-m", f"aiaas.{args.model}"]
        children.append(ChildProcess(command, env, tmp / f"{side}.log").start())
        client = getattr(args, f"{side.lower()}_load_client")
        loads.append(RawLoad(kafka, args.model, reader="process" if client == "librdkafka" else args.reader,
                             client=client))
    pool = payloads(args.model, POOL, registry, seed=2)
    loads = [_MeteredLoad(load, {"service": child.pid, "load generator": os.getpid()}
                          | ({"broker": broker.pid} if broker.pid else {}))
             for load, child in zip(loads, children, strict=True)]
    for load in loads:
        await load.start()
    if args.pin:
        _pin(broker, children, [load.load for load in loads])
    take = cycling(pool)
    try:
        a, b = await saturate(loads, take, target_s=args.seconds, repeats=args.rounds, pilot=500, log=log,
                              names=[" (A)", " (B)"])
        latency = {share: await _latency_rounds(loads, take, share * a.jobs_per_s, share, args)
                   for share in args.latency}
        merged = {share: (over_rounds(on_a), over_rounds(on_b)) for share, (on_a, on_b) in latency.items()}
        if merged:
            await add_hops_once_stored([p for pair in merged.values() for p in pair], tmp / "home" / "spans",
                                       args.model)
    finally:
        for load in loads:
            try:
                await load.stop()
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - a client that fails to close
                # (aiokafka's fetcher has raised CancelledError out of a timed-out request here) must not cost the
                # measurements their report
                log(f"stopping a load generator failed: {exc!r}")
        for child in children:
            child.stop()
    ratios = round_ratios(b, a)  # B / A per round, as bench/run.py's ratios
    describe = {side: " ".join([f"code of {getattr(args, side.lower()) or REPO}",
                                *(["no-op model (bench/transport.py)"] if side in args.noop else []),
                                f"(load generator: {load.load.name}, results read by "
                                f"{'a process of its own' if load.load.reader == 'process' else 'its event loop'})",
                                *(f"{k}={v}" for k, v in sides[side].items() if k != "PYTHONPATH")])
                for side, load in zip(sides, loads, strict=True)}
    lines = [f"A/B {args.model}, {time.strftime('%Y-%m-%d %H:%M')}: {args.rounds} rounds of alternating bursts "
             f"(~{args.seconds:.0f} s each)", "", f"- A: {describe['A']}", f"- B: {describe['B']}", "",
             "| round | A jobs/s | B jobs/s | B / A | A mean batch | B mean batch |", "|---:|---:|---:|---:|---:|---:|"]
    for i, (x, y, r) in enumerate(zip(a.bursts, b.bursts, ratios, strict=False), 1):
        lines.append(f"| {i} | {x.jobs_per_s:,.0f} | {y.jobs_per_s:,.0f} | {r:.2f} | "
                     f"{x.mean_batch:.1f} | {y.mean_batch:.1f} |")
    lines.append(f"| median | {a.jobs_per_s:,.0f} | {b.jobs_per_s:,.0f} | **{statistics.median(ratios):.2f}** "
                 f"(range {min(ratios):.2f}–{max(ratios):.2f}) | | |")
    lines += ["", "CPU per job, median over the bursts (each process all threads; busy cores: the whole machine; the "
              "results reader where it has a process of its own):", "", *_cpu_header("side")]
    for side, load, saturation in zip(sides, loads, (a, b), strict=True):
        lines.append(_cpu_row(side, load.of(saturation.bursts)))
    if latency:
        lines += _latency_table(latency, merged, a.jobs_per_s, args) + _hop_p99_table(merged)
        lines += ["", "CPU per job in the latency rounds, median over each side's rounds (as above; a round's figures "
                  "include its jobs' preparation before the schedule and the wait for its last results):", "",
                  *_cpu_header("offered | side")]
        for share in latency:
            for side, load in zip(sides, loads, strict=True):
                lines.append(_cpu_row(f"{share:.0%} | {side}", [c for s, c in load.open_loop_cpu if s == share]))
    return "\n".join(lines)


async def _latency_rounds(loads: list[_MeteredLoad], take: Callable[[int], list[Payload]], rate: float, share: float,
                          args: argparse.Namespace) -> tuple[list[OpenLoop], list[OpenLoop]]:
    """Open loop at `rate` on each side in turn, `args.rounds` times (each round starts with the other side, as
    `saturate`'s rounds do); each side's points, in round order."""
    sides: tuple[list[OpenLoop], list[OpenLoop]] = ([], [])
    for round_ in range(1, args.rounds + 1):
        turns = list(zip("AB", loads, sides, strict=True))
        for name, load, points in turns if round_ % 2 else turns[::-1]:
            point = await load.open_loop(take(max(int(rate * args.seconds), 20)), rate=rate, share=share,
                                         burst=args.burst)
            points.append(point)
            log(f"  latency {share:.0%} ({rate:,.0f}/s) round {round_} ({name}): p50 {point.p50_ms:.1f} "
                f"p95 {point.p95_ms:.1f} p99 {point.p99_ms:.1f} ms, achieved {point.achieved_per_s:,.0f}/s, "
                f"mean batch {point.mean_batch:.1f}, publisher up to {point.max_lag_ms:.0f} ms late")
    return sides


_CPU_MEASURED = ("service", "broker", "load generator", "results reader")


def _cpu_header(first: str) -> list[str]:
    return ["| " + first + " | " + " | ".join(f"{name} µs" for name in _CPU_MEASURED) + " | busy cores |",
            "|---" * (first.count("|") + 1) + "|" + "---:|" * (len(_CPU_MEASURED) + 1)]


def _cpu_row(first: str, records: list[dict[str, float]]) -> str:
    """Medians of `records` (CPU µs per job per process, busy cores), as a table row after `first`."""
    cells = [f"{statistics.median(c[name] for c in records):,.0f}" if records and name in records[0] else "–"
             for name in _CPU_MEASURED]
    busy = f"{statistics.median(c['busy cores'] for c in records):.2f}" if records else "–"
    return f"| {first} | " + " | ".join(cells) + f" | {busy} |"


def _latency_table(latency: dict[float, tuple[list[OpenLoop], list[OpenLoop]]],
                   merged: dict[float, tuple[OpenLoop, OpenLoop]], a_per_s: float,
                   args: argparse.Namespace) -> list[str]:
    grouped = f", {args.burst} jobs at a time" if args.burst > 1 else ""
    lines = ["", f"Latency side by side (publish → result received; open loop at a share of A's {a_per_s:,.0f} "
             f"jobs/s{grouped}, {args.rounds} rounds of ~{args.seconds:.0f} s per side; medians over the rounds):", "",
             "| offered | jobs/s | A p50 / p95 / p99 ms | B p50 / p95 / p99 ms "
             "| B / A p50 (range) | B / A p95 (range) | B / A p99 (range) | mean batch A | mean batch B "
             "| publisher max lag ms A / B |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for share, (on_a, on_b) in latency.items():
        ratios = " | ".join(_ratio(on_a, on_b, name) for name in ("p50_ms", "p95_ms", "p99_ms"))
        lines.append(f"| {share:.0%} | {share * a_per_s:,.0f} | {_percentiles(merged[share][0])} "
                     f"| {_percentiles(merged[share][1])} | {ratios} | {merged[share][0].mean_batch:.1f} "
                     f"| {merged[share][1].mean_batch:.1f} "
                     f"| {merged[share][0].max_lag_ms:.0f} / {merged[share][1].max_lag_ms:.0f} |")
    return lines


def _hop_p99_table(merged: dict[float, tuple[OpenLoop, OpenLoop]]) -> list[str]:
    """Each side's hops at each share, over all its rounds' jobs (as bench/run.py's hop table), from the services'
    traces (bench/hop_breakdown.py), and the hop its slowest 1 % spent most of their time in."""
    points = [p for pair in merged.values() for p in pair]
    hops = [hop for hop in HOPS if any(hop in p.hops for p in points)]
    if not hops:
        return []
    lines = ["", "Where the time went (ms: each hop's p99 over all rounds' jobs, from the traces):", "",
             "| offered | side | " + " | ".join(hops) + " | slowest 1 % mostly in |",
             "|---:|---|" + "---:|" * len(hops) + "---|"]
    for share, pair in merged.items():
        for name, point in zip("AB", pair, strict=True):
            cells = [f"{point.hops[hop].p99:.1f}" if hop in point.hops else "–" for hop in hops]
            most = point.slowest.most if point.slowest and point.slowest.mean_ms else "–"
            lines.append(f"| {share:.0%} | {name} | " + " | ".join(cells) + f" | {most} |")
    return lines


def _pin(broker: LocalBroker, children: list[ChildProcess], loads: list[RawLoad]) -> None:
    """`--pin`: the services under test on the last core, everything else on the others."""
    service_cores, other_cores = split_cores()
    readers = [pid for load in loads if (pid := load.reader_pid) is not None]
    pin_beside_broker(broker, other_cores, [os.getpid(), *readers])
    for child in children:
        pin(child.pid, service_cores)
    log(f"pinned: services on core(s) {sorted(service_cores)}; broker, load generator and results readers on "
        f"{sorted(other_cores)}")


def _share(text: str) -> float:
    share = float(text)
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"a share of A's saturated throughput is in (0, 1]; got {text}")
    return share


def _percentiles(point: OpenLoop) -> str:
    return f"{point.p50_ms:.1f} / {point.p95_ms:.1f} / {point.p99_ms:.1f}"


def _ratio(on_a: list[OpenLoop], on_b: list[OpenLoop], name: str) -> str:
    ratios = [getattr(b, name) / getattr(a, name) for a, b in zip(on_a, on_b, strict=True)]
    return f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}–{max(ratios):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="vision")
    parser.add_argument("--a", type=Path, help="root of the checkout side A runs (default: this one)")
    parser.add_argument("--b", type=Path, help="root of the checkout side B runs (default: this one)")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE", help="a variable for side A only")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE", help="a variable for side B only")
    parser.add_argument("--noop", action="append", default=[], choices=("A", "B"),
                        help="this side runs the no-op model of the transport ceiling (bench/transport.py) instead")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each burst")
    parser.add_argument("--latency", type=_share, nargs="+", default=[], metavar="SHARE",
                        help="also compare latency at these shares of A's saturated throughput (e.g. 0.25 0.5 0.75)")
    parser.add_argument("--burst", type=int, default=1, metavar="N",
                        help="--latency publishes N jobs at a time (at the same mean rate): an upstream that publishes "
                        "in groups")
    parser.add_argument("--port", type=int, default=29692)
    parser.add_argument("--pin", action="store_true",
                        help="the two services on the machine's last core, the broker, the load generator and its "
                        "results readers on the others: latency without the load generator's share of the service's "
                        "core (on Linux)")
    for side in "ab":
        parser.add_argument(f"--{side}-load-client", choices=CLIENTS, default="aiokafka",
                            help=f"the Kafka client side {side.upper()}'s load generator publishes and reads with "
                            "(librdkafka: C threads, results read in a process of their own; bench/rdkafka.py)")
    parser.add_argument("--reader", choices=("loop", "process"), default="loop",
                        help="where the load generator reads results: in its publishing event loop (as before), or "
                        "in a process of its own (receipts not timed late while the publisher holds the loop)")
    args = parser.parse_args()
    log(f"building {args.model}")
    with built_model_and_broker(args.model, args.port, "aiaas-ab-") as (tmp, broker, registry):
        print(asyncio.run(_compare(args, tmp, broker, registry)))


if __name__ == "__main__":
    main()
