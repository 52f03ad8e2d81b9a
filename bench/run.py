"""The aiaas benchmark harness: one command, per model type, side by side in one run.

    .venv/bin/python bench/run.py                       # every batch model type (full run)
    .venv/bin/python bench/run.py --models vision       # one model type
    .venv/bin/python bench/run.py --quick               # smoke run: small N, a few batch sizes

For each model type that answers in one result (all but the llm) it measures, on this machine:

1. runtime ceiling — the runtime's `infer` alone on prepared batches, batch sizes 1…256 (ceilings.py);
2. side by side, all four consumers running at once and measured by alternating bursts (so the
   ratios compare the same minutes of the same machine):
   transport ceiling — the real service machinery with a no-op model (transport.py);
   naive consumer — a one-message-at-a-time FastStream subscriber with the same runtime (naive.py);
   the service — `python -m aiaas.<model>` with tracing on, and again with export off (tracing cost);
3. latency p50/p95/p99 of the traced service alone at 25/50/75 % of its saturated throughput under
   open-loop load (load.py), and one AiaasClient burst.

It starts its own broker (`infra/kafka/kafka.sh`, port 29592 and a temporary state dir, so it
never meets the test suite's broker on 29092), builds the models into a temporary registry
(unless `--registry DIR`), gives every stage its own topic prefix, and stops everything it
started at the end, also on failure. The report (Markdown table + details) is printed and
written to `<out>/<date>-<machine>.md` with a latency plot `<date>-<machine>.png` (report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.contract.topics import service_topics
from aiaas.kafka.admin import ensure_topics, partition_count
from aiaas.registry.store import Registry
from aiaas.settings import HomeSettings, KafkaSettings
from aiaas.tracing.setup import setup_tracing
from aiaas.tracing.span_store import SUFFIX, count_spans
from bench.ceilings import RuntimeBursts, runtime_ceilings
from bench.hop_breakdown import add_hops_once_stored
from bench.load import (
    ClientLoad,
    Load,
    OpenLoop,
    RawLoad,
    Saturation,
    burst,
    cycling,
    open_loop,
    over_rounds,
    saturate,
)
from bench.procs import REPO, ChildProcess, LocalBroker, OtherWork, core_meter, service_env, stop_all
from bench.report import (
    ALONE_PER_S,
    MachineInfo,
    ModelResult,
    level_name,
    machine_slug,
    markdown,
    plot,
)
from bench.stops import Stops, scrape_service
from bench.transport import start_inprocess
from bench.workloads import MODELS, Payload, build_model, payloads, settings_class

SHARES = (0.25, 0.5, 0.75)
POOL = 5000
"""Distinct payloads per model type; bursts cycle through them."""


def log(message: str) -> None:
    """Progress on stderr (stdout gets the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """One run: broker, registry, temporary home, load generator, and the knobs of --quick."""

    def __init__(self, args: argparse.Namespace, tmp: Path, broker: LocalBroker, registry: Registry) -> None:
        self.args, self.tmp, self.broker, self.registry = args, tmp, broker, registry
        self.home = tmp / "home"
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_id = uuid.uuid4().hex[:6]
        quick = args.quick
        self.target_s = 0.5 if quick else 2.0
        self.repeats = 1 if quick else 7
        self.open_loop_s = 1.5 if quick else 5.0
        self.latency_rounds = 1 if quick else args.latency_rounds
        self.pilot = 100 if quick else 500
        self.notes: list[str] = []

    def kafka(self, prefix: str) -> KafkaSettings:
        """Settings of one stage: this run's broker and the stage's own topic prefix."""
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap, topic_prefix=prefix)

    def prefix(self, model: str, stage: str) -> str:
        """A topic prefix no other stage or run uses."""
        return f"bench-{self.run_id}-{model}-{stage}"

    def load(self, model: str, stage: str, kind: str | None = None) -> Load:
        """The load generator for a stage (--load; `kind` overrides)."""
        kafka = self.kafka(self.prefix(model, stage))
        return (ClientLoad if (kind or self.args.load) == "client" else RawLoad)(kafka, model)

    def child(self, model: str, stage: str, args: list[str], marker: str = " ready: ",
              extra_env: dict[str, str] | None = None) -> ChildProcess:
        """A child process on the stage's prefix, with this run's broker and home."""
        env = service_env(self.broker.bootstrap, self.prefix(model, stage), self.home, extra_env)
        return ChildProcess(args, env, self.logs / f"{model}-{stage}.log", marker=marker)

    async def saturated(self, loads: list[Load], pool: list[Payload], *, pilot: int | list[int] | None = None,
                        names: list[str] | None = None) -> list[Saturation]:
        """Start the generators, pilot burst each (warm-up, sizing), repeated bursts, stop them."""
        for load in loads:
            await load.start()
        try:
            return await saturate(loads, cycling(pool), target_s=self.target_s, repeats=self.repeats,
                                  pilot=pilot or self.pilot, log=log, names=names)
        finally:
            for load in loads:
                await load.stop()

    # -- stages ---------------------------------------------------------------------------

    async def warm_up(self, pool: list[Payload], model: str) -> None:
        """A fresh broker JVM is slow until its hot paths are compiled: run traffic through it first (not reported)."""
        load = self.load(model, "warmup", "raw")
        await prepare_topics(load.kafka, model)
        service, task = start_inprocess(model, load.kafka)
        await load.start()
        try:
            take = cycling(pool)
            for _ in range(2):
                await burst(load, take(self.pilot * 4))
        finally:
            await load.stop()
            service.stop()
            await task

    async def side_by_side(self, model: str, pool: list[Payload], result: ModelResult) -> None:
        """Transport ceiling, naive consumer and the service with tracing on and off, all running at once and
        measured with alternating bursts (each consumer idles while another's burst runs), so machine drift —
        a VM's neighbours, a throttled CPU — cannot tilt the ratios. Then open-loop latency and an AiaasClient
        burst on the traced service."""
        transport, naive = self.load(model, "transport"), self.load(model, "naive")
        on, off = self.load(model, "service"), self.load(model, "untraced")
        for load in (transport, naive, on, off):
            await prepare_topics(load.kafka, model)  # 3 partitions each, as the service's
        noop_service, others = None, []
        traced = self.child(model, "service", ["-m", f"aiaas.{model}"])
        try:
            if self.args.transport == "inprocess":
                noop_service = start_inprocess(model, transport.kafka)
            else:
                others.append(self.child(model, "transport", ["bench/transport.py", "--model", model]).start())
            others.append(self.child(model, "naive", ["bench/naive.py", "--model", model],
                                     marker="naive consumer ready:").start())
            traced.start()
            others.append(self.child(model, "untraced", ["-m", f"aiaas.{model}"],
                                     extra_env={"OTEL_TRACES_EXPORTER": "none"}).start())
            served = result.served_runtime
            # At the sweep's best batch size, or the service's max_batch where that is larger: a sweep on a VM in a
            # slow minute can crown a small batch that is not the runtime's best (text's curve is flat from 8 to 64).
            runtime = [RuntimeBursts(model, self.registry, max(served.best.batch, result.max_batch), self.target_s)] \
                if served and served.best else []
            result.transport, result.naive, result.service, result.service_untraced, *in_rounds = await self.saturated(
                [transport, naive, on, off, *runtime], pool,
                pilot=[self.pilot, max(self.pilot // 5, 50), self.pilot, self.pilot] + [self.pilot] * len(runtime),
                names=[" (transport)", " (naive)", ", tracing on", ", tracing export off"]
                + [f" (runtime alone, batch {r.batch})" for r in runtime])
            result.runtime_in_rounds = in_rounds[0] if in_rounds else None
            if noop_service is not None:
                noop_service[0].stop()
                await noop_service[1]
                noop_service = None
            for child in others:  # the open loop measures the traced service alone
                child.stop()
            take = cycling(pool)
            if isinstance(on, RawLoad):  # the latency's receipts, timed by a reader the publisher does not hold up
                on = RawLoad(on.kafka, model, reader=self.args.reader)
            await on.start()
            alone: list[OpenLoop] = []
            points: dict[float, list[OpenLoop]] = {share: [] for share in SHARES}
            stops: dict[str, list[Stops | None]] = {level_name(share): [] for share in (0, *SHARES)}

            def cores() -> Callable[[], dict[str, float]]:
                """What runs on the cores during an open loop: the traced service, the broker, this process (the
                load generator) and its results reader."""
                return core_meter({"service": traced.pid, "broker": self.broker.pid, "load generator": os.getpid(),
                                   "results reader": on.reader_pid if isinstance(on, RawLoad) else None})

            async def stopped(level: str, measure: Awaitable[OpenLoop]) -> OpenLoop:
                """`measure`, with the traced service's own stops meanwhile."""
                before = await asyncio.to_thread(scrape_service, self.home, traced.pid)
                point = await measure
                stops[level].append(Stops.between(before, await asyncio.to_thread(scrape_service, self.home,
                                                                                  traced.pid)))
                return point

            try:
                # Round after round of every level, so a slow minute of the machine falls on all of them alike.
                for round_ in range(1, self.latency_rounds + 1):
                    alone.append(await stopped(level_name(0), open_loop(on, take(int(ALONE_PER_S * self.open_loop_s)),
                                                                rate=ALONE_PER_S, share=0, cores=cores)))
                    log(f"    round {round_}: one at a time ({ALONE_PER_S}/s): p50 {alone[-1].p50_ms:.1f} "
                        f"p99 {alone[-1].p99_ms:.1f} ms")
                    for share in SHARES:
                        rate = share * result.service.jobs_per_s
                        point = await stopped(level_name(share), open_loop(
                            on, take(max(int(rate * self.open_loop_s), 20)), rate=rate, share=share, cores=cores))
                        points[share].append(point)
                        log(f"    round {round_}: open loop {share:.0%} ({rate:,.0f}/s, achieved "
                            f"{point.achieved_per_s:,.0f}/s): p50 {point.p50_ms:.1f} p95 {point.p95_ms:.1f} "
                            f"p99 {point.p99_ms:.1f} ms")
            finally:
                await on.stop()
            result.alone = over_rounds(alone)
            result.open_loop = [over_rounds(rounds) for rounds in points.values()]
            result.stops = {level: Stops.combined(found) for level, found in stops.items()}
            await add_hops_once_stored([result.alone, *result.open_loop], self.home / "spans", model)
            if self.args.load == "raw":
                log("    the same service through AiaasClient (this process traces its spans too)")
                client = ClientLoad(on.kafka, model)
                (result.service_client,) = await self.saturated([client], pool)
        finally:
            if noop_service is not None:
                noop_service[0].stop()
                await noop_service[1]
            for child in (*others, traced):
                child.stop()
        result.span_share = _span_share(traced, self.home / "spans" / f"aiaas-{model}-{traced.pid}{SUFFIX}")

    async def model(self, model: str, warm_up: bool) -> ModelResult:
        """Every stage for one model type; a stage that fails is logged and reported, the others still run."""
        started = time.perf_counter()
        result = ModelResult(model, settings_class(model)().max_batch)
        pool = payloads(model, POOL, self.registry, seed=2)

        async def stage(name: str, run) -> None:
            log(f"{model}: {name}")
            try:
                await run()
            except Exception as exc:  # noqa: BLE001 - reported in the notes; Ctrl-C and SIGTERM still stop the run
                log(f"{model}: {name} FAILED: {type(exc).__name__}: {exc}")
                self.notes.append(f"{model} {name} failed: {type(exc).__name__}: {str(exc)[:300]}")

        async def ceilings() -> None:
            result.runtime = runtime_ceilings(model, self.registry, quick=self.args.quick, log=log)

        await stage("runtime ceiling", ceilings)
        if warm_up:
            await stage("broker warm-up (not reported)", lambda: self.warm_up(pool, model))
        await stage(f"transport ceiling ({self.args.transport}), naive consumer, service with tracing on and "
                    "export off: side by side, alternating bursts; then open loop",
                    lambda: self.side_by_side(model, pool, result))
        result.seconds = time.perf_counter() - started
        return result


async def prepare_topics(kafka: KafkaSettings, model: str, timeout: float = 30) -> None:
    """Create a stage's topics and wait until the broker describes every one with its partitions.

    Works around a start-up race in the service: `ModelWatcher.start` asks for the partitions of
    `<prefix>.models` right after creating it, may be told 0, and then fails with "No partitions
    are currently assigned" (seek_to_end on nothing). With the topics already there it never does.
    """
    names = service_topics(model, kafka)
    await ensure_topics(kafka, names)
    deadline = time.monotonic() + timeout
    for name in names:
        while await partition_count(kafka, name) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name} has no partitions {timeout:.0f} s after its creation")
            await asyncio.sleep(0.1)


def _span_share(service: ChildProcess, spans: Path) -> float | None:
    """Spans the traced service stored / spans it made (2 per job + 1 per batch, from its shutdown log line)."""
    stopped = re.search(r"service stopped: (\d+) jobs in (\d+) batches", service.log_text())
    if not stopped or not spans.exists():
        return None
    jobs, batches = map(int, stopped.groups())
    stored = count_spans(spans)
    spans.unlink()  # large; nobody reads it after this
    return stored / (2 * jobs + batches) if jobs else None


def _registry(args: argparse.Namespace, home: Path) -> Registry:
    """A registry at `<home>/registry` (what AIAAS_HOME points the services at): built here, or --registry linked in."""
    target = home / "registry"
    home.mkdir(parents=True, exist_ok=True)
    if args.registry:
        source = args.registry.resolve()
        if (source / "registry").is_dir():
            source = source / "registry"  # an AIAAS_HOME was given
        target.symlink_to(source, target_is_directory=True)
        registry = Registry(target)
        missing = [m for m in args.models if m not in registry.models()]
        if missing:
            raise SystemExit(f"--registry {source} has no {', '.join(missing)} model; "
                             f"build with `AIAAS_HOME={source.parent} aiaas models build <model>`")
        return registry
    registry = Registry(target)
    for model in args.models:
        log(f"building {model} into a temporary registry")
        build_model(model, registry)
    return registry


def _client_bound_notes(results: list[ModelResult]) -> list[str]:
    notes = []
    for r in results:
        for name, sat in (("transport", r.transport), ("naive", r.naive), ("service", r.service),
                          ("service via AiaasClient", r.service_client)):
            if sat and sat.bursts and sat.publish_per_s < 1.15 * sat.jobs_per_s:
                notes.append(f"{r.model} {name}: the load generator published at {sat.publish_per_s:,.0f}/s, "
                             f"within 15 % of the {sat.jobs_per_s:,.0f} jobs/s measured: the publishing side may be "
                             "the limit.")
    return notes


def _at_least_one(text: str) -> int:
    rounds = int(text)
    if rounds < 1:
        raise argparse.ArgumentTypeError(f"at least one round; got {text}")
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {','.join(MODELS)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: small bursts, few batch sizes")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where the report goes")
    parser.add_argument("--registry", type=Path,
                        help="use this registry (or AIAAS_HOME) instead of building the models")
    parser.add_argument("--port", type=int, default=29592, help="port of the benchmark's own broker")
    parser.add_argument("--transport", choices=("subprocess", "inprocess"), default="subprocess",
                        help="where the no-op service of the transport ceiling runs")
    parser.add_argument("--load", choices=("raw", "client"), default="raw",
                        help="load generator of every stage: pre-encoded jobs on a plain aiokafka producer (raw, "
                             "default; the service is also measured once through AiaasClient) or AiaasClient for "
                             "everything")
    parser.add_argument("--latency-rounds", type=_at_least_one, default=3, metavar="N",
                        help="open-loop rounds per level (each round runs every level once); each percentile is the "
                        "median of the rounds' (1 with --quick; runs before 2026-12-06 had one)")
    parser.add_argument("--reader", choices=("loop", "process"), default="process",
                        help="open-loop latency: the raw load generator reads results in a process of its own "
                        "(default) or in its publishing event loop (as runs before 2026-12-05 did)")
    parser.add_argument("--machine", help="machine name in the file name (default: CPU model and core count)")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop broker and children

    command = " ".join([".venv/bin/python bench/run.py", *sys.argv[1:]])
    info = MachineInfo.collect()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="aiaas-bench-"))
    provider = None
    results: list[ModelResult] = []
    broker = LocalBroker(args.port, tmp / "kafka")
    other_work = OtherWork(lambda: {broker.pid} if broker.running and broker.pid else set())
    other_work.start()
    try:
        registry = _registry(args, tmp / "home")
        # The client's spans (send, process results) go to the temporary span store: tracing on, as a user has it.
        provider = setup_tracing("aiaas-bench", home=HomeSettings(home=tmp / "home"))
        log(f"starting the broker on 127.0.0.1:{args.port}")
        broker.start()
        bench = Bench(args, tmp, broker, registry)
        for i, model in enumerate(args.models):
            results.append(asyncio.run(bench.model(model, warm_up=i == 0)))
    finally:
        info.other_work = other_work.stop()
        info.stolen = other_work.stolen
        stop_all()
        if provider is not None:
            provider.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - started

    notes = bench.notes + _client_bound_notes(results)
    if args.load == "raw":
        notes.append("Open-loop latency: results read " + (
            "by a process of the load generator's own (`bench/result_reader.py`), so a receipt is timed when it "
            "arrives, not when the publishing event loop gets to it" if args.reader == "process" else
            "in the load generator's publishing event loop (`--reader loop`; a receipt may be timed late while the "
            "loop publishes)") + ".")
    if info.other_work and info.other_work[0] > 0.1 * info.cores:
        notes.insert(0, "**The machine was busy**: other processes (not this run's) used "
                        f"{info.other_work[0]:.2f} of its {info.cores} cores on average during the run "
                        f"(up to {info.other_work[1]:.2f}); the figures are lower and noisier than on an idle machine.")
    overrides = {k: v for k, v in os.environ.items() if k.startswith("AIAAS_")}
    if overrides:
        notes.append("Settings from the environment: " + ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())))
    report = markdown(results, info, command=command, total_s=total, quick=args.quick, transport_mode=args.transport,
                      load=args.load, notes=notes, burst_s=bench.target_s, repeats=bench.repeats,
                      open_loop_s=bench.open_loop_s, latency_rounds=bench.latency_rounds)
    stem = f"{time.strftime('%Y-%m-%d')}-{args.machine or machine_slug(info)}"
    if set(args.models) != set(MODELS):
        stem += "-" + "-".join(args.models)
    if args.quick:
        stem += "-quick"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(report)
    png = args.out / f"{stem}.png"
    if plot(results, png,
            f"aiaas latency vs offered load — {info.cpu}, {info.cores} cores, {time.strftime('%Y-%m-%d')}"):
        report += f"\n![latency vs offered load]({png.name})\n"
        (args.out / f"{stem}.md").write_text(report)
    else:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
    print(report)
    log(f"wrote {args.out / (stem + '.md')} in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
