"""The LLM service over Kafka: output tokens/s at saturation against a naive consumer and the runtime ceiling, and
time to first token and per output token under open-loop load.

    .venv/bin/python bench/llm_service.py [--saturation-s 60] [--point-s 45] [--out bench/results]

It starts its own broker (port 29692, a temporary state dir), builds the LLM into a temporary registry (as
`aiaas models build llm` does) and runs the same jobs everywhere: chat questions of mixed length with answer limits
of 16–256 tokens (bench/llm_engine.py's, `--seed`), greedy. Tracing is on: the service exports its spans to its
span store, and the load generator (AiaasClient) traces its own. One stage runs at a time.

1. **runtime ceiling**, in this process, no Kafka: Transformers' `generate()` on static left-padded batches of
   each of `--static-batches` sizes over `--ceiling-jobs` jobs (tokens/s counts each job's own tokens), the best
   of them being the issue's ceiling; and the engine's continuous batching with the service's rows
   (`AIAAS_LLM_MODEL_INSTANCES`), all jobs at once: what the service could do without Kafka;
2. **naive consumer** (`bench/naive.py --model llm`): FastStream, `generate()` per job; `--naive-jobs` jobs
   published at once, output tokens over the time from the first publish to the last result;
3. **the service** (`python -m aiaas.llm`, default settings), through AiaasClient, streamed:
   - *alone*: `--lone-jobs` jobs one after the other;
   - *saturation*: a closed loop keeping `--in-flight` jobs published (more than the service's rows) for
     `--saturation-s`; output tokens/s = chunk tokens received after the first `--warm-up-s`, over that time;
     jobs/s likewise (final results); the jobs still running at the end are cancelled;
   - *open loop*: jobs published evenly spaced at 25/50/75 % of the saturated jobs/s for `--point-s` each.
   Time to first token: publish → the first chunk at the client. Time per output token: (final result − first
   chunk) / (output tokens − 1), each job's own.

Writes `<out>/<date>-llm-service-<machine>.md` and a plot `.png` of both times against the offered load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.client.client import AiaasClient
from aiaas.contract.envelopes import Result
from aiaas.llm.settings import LlmSettings
from aiaas.registry.store import Registry
from aiaas.settings import HomeSettings, KafkaSettings
from aiaas.tracing.setup import setup_tracing
from bench.llm_engine import arithmetic_ceiling, engine_run, jobs, questions, static_batches
from bench.load import collector_paused
from bench.procs import ChildProcess, LocalBroker, OtherWork, service_env, stop_all
from bench.report import MachineInfo, machine_slug
from bench.run import prepare_topics
from bench.workloads import build_model

SHARES = (0.25, 0.5, 0.75)
Question = tuple[str, int]
"""A chat question and its answer limit (max_tokens)."""


def log(message: str) -> None:
    """Progress on stderr (stdout gets the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Timing:
    """One job as the client saw it (perf_counter seconds)."""

    submitted: float
    finished: float
    first: float | None
    completion_tokens: int
    finish_reason: str
    chunks: list[tuple[float, int]] = field(default_factory=list)
    """(arrival, tokens) of every chunk."""

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.submitted) * 1000

    @property
    def tpot_ms(self) -> float | None:
        if self.first is None or self.completion_tokens < 2:
            return None
        return (self.finished - self.first) * 1000 / (self.completion_tokens - 1)


@dataclass
class Point:
    """Latency of the service at one offered load (share 0: one job at a time)."""

    share: float
    offered_per_s: float
    timings: list[Timing]
    seconds: float

    def _values(self, name: str) -> list[float]:
        return [v for t in self.timings if (v := getattr(t, name)) is not None]

    def p(self, name: str, q: float) -> float:
        values = sorted(self._values(name))
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return sum(t.completion_tokens for t in self.timings) / self.seconds


@dataclass
class Throughput:
    name: str
    jobs: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


class ServiceLoad:
    """Jobs through AiaasClient, streamed, with their timings; `cancel_all` ends the ones still running."""

    def __init__(self, client: AiaasClient, pool: Iterator[Question]) -> None:
        self.client, self.pool = client, pool
        self.running: set[str] = set()

    async def job(self, question: Question | None = None, timeout: float = 900, due: float | None = None) -> Timing:
        """One job; its times count from `due` (an open loop's schedule: a late start counts) or from now."""
        text, limit = question or next(self.pool)
        submitted = due if due is not None else time.perf_counter()
        handle = await self.client.submit("llm", {}, task="chat", messages=[{"role": "user", "content": text}],
                                          generation={"max_tokens": limit})
        self.running.add(handle.job_id)
        first, chunks = None, []
        try:
            async for event in handle.events(timeout):
                now = time.perf_counter()
                if event.status == "chunk" and event.chunk is not None:
                    chunks.append((now, event.chunk.tokens))
                    if first is None and event.chunk.tokens:
                        first = now
                    continue
                return _final(event, submitted, now, first, chunks)
        finally:
            self.running.discard(handle.job_id)
        raise RuntimeError(f"job {handle.job_id} ended without a result")

    async def cancel_all(self) -> None:
        for job_id in list(self.running):
            await self.client.cancel(job_id, model="llm")


def _final(result: Result, submitted: float, now: float, first: float | None,
           chunks: list[tuple[float, int]]) -> Timing:
    if result.status != "ok" or result.outputs is None:
        raise RuntimeError(f"job {result.job_id} failed: {result.status} {result.error}")
    outputs = result.outputs
    return Timing(submitted, now, first, int(outputs["completion_tokens"]), str(outputs["finish_reason"]), chunks)


async def alone(load: ServiceLoad, count: int) -> Point:
    started = time.perf_counter()
    timings = [await load.job() for _ in range(count)]
    return Point(0.0, 0.0, timings, time.perf_counter() - started)


async def saturation(load: ServiceLoad, in_flight: int, seconds: float, warm_up: float) -> tuple[Throughput, float]:
    """(output tokens in the measured window, final results per second in it)."""
    started = time.perf_counter()
    window = (started + warm_up, started + seconds)
    timings: list[Timing] = []

    async def keep_one_in_flight() -> None:
        while time.perf_counter() < window[1]:
            timings.append(await load.job())

    loops = [asyncio.create_task(keep_one_in_flight()) for _ in range(in_flight)]
    await asyncio.sleep(seconds)
    await load.cancel_all()
    while load.running:  # jobs published just before the end, not yet cancelled
        await asyncio.sleep(0.5)
        await load.cancel_all()
    await asyncio.gather(*loops)
    tokens = sum(n for t in timings for at, n in t.chunks if window[0] <= at < window[1])
    finals = sum(1 for t in timings if window[0] <= t.finished < window[1] and t.finish_reason != "cancelled")
    span = window[1] - window[0]
    return Throughput("service at saturation (Kafka, tracing on)", finals, tokens, span), finals / span


async def open_loop(load: ServiceLoad, share: float, rate: float, seconds: float) -> Point:
    count = max(int(rate * seconds), 8)
    with collector_paused():  # no full collection stops the schedule (bench/load.py)
        started = time.perf_counter()
        tasks = []
        for i in range(count):
            due = started + i / rate
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            tasks.append(asyncio.create_task(load.job(due=due)))
        timings = list(await asyncio.gather(*tasks))
    return Point(share, rate, timings, max(t.finished for t in timings) - started)


async def naive(kafka: KafkaSettings, work: Sequence[Question]) -> Throughput:
    async with AiaasClient(kafka) as client:
        warm_up = await client.submit("llm", {}, task="chat", messages=[{"role": "user", "content": "Hello"}],
                                      generation={"max_tokens": 4})
        await warm_up.result(timeout=300)  # the consumer has joined its group: not measured
        started = time.perf_counter()
        handles = [await client.submit("llm", {}, task="chat", messages=[{"role": "user", "content": text}],
                                       generation={"max_tokens": limit}) for text, limit in work]
        results = [await h.result(timeout=1800) for h in handles]
        seconds = time.perf_counter() - started
    tokens = sum(int(r.outputs["completion_tokens"]) for r in results if r.outputs)
    return Throughput("naive consumer (FastStream, `generate()` per job)", len(results), tokens, seconds)


def in_process(registry: Registry, args: argparse.Namespace, rows: int) -> tuple[list[Throughput], float]:
    """The static batches and the engine without Kafka; and the arithmetic ceiling in tokens/s."""

    from aiaas.llm.engine import GenerationEngine
    from aiaas.llm.weights import load_folder, placement

    device, dtype = placement()  # as the service's `auto`, and its precision there
    model, tokenizer = load_folder(registry.verified_folder(registry.resolve("llm", "production")), device=device,
                                   dtype=dtype)
    eos = {model.generation_config.eos_token_id, tokenizer.eos_token_id} - {None}
    work = jobs(tokenizer, args.ceiling_jobs, args.seed)
    measured = []
    for size in args.static_batches:
        seconds, tokens = static_batches(model, tokenizer, work, eos, size)
        measured.append(Throughput(f"static batches of {size} (`generate()`, no Kafka)", len(work), tokens, seconds))
        log(f"  static batches of {size}: {tokens / seconds:,.1f} tokens/s")
    engine = GenerationEngine(model, tokenizer, max_batch=rows, max_batch_tokens=LlmSettings().max_batch_tokens)
    seconds, tokens, _, _ = engine_run(engine, work)
    measured.append(Throughput(f"engine, {rows} rows, all at once (no Kafka)", len(work), tokens, seconds))
    log(f"  engine: {tokens / seconds:,.1f} tokens/s")
    _, _, ceiling = arithmetic_ceiling(model, rows)
    del model, engine
    gc.collect()
    return measured, ceiling


def precision() -> str:
    """Where the service generates here (its `auto` device) and in what precision."""
    import torch

    return f"bf16 on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "fp32 on the CPU"


def _fmt(value: float) -> str:
    return "–" if value != value else f"{value:,.0f}"  # NaN: nothing measured


def report(args: argparse.Namespace, info: MachineInfo, rows: int, static: list[Throughput], engine: Throughput,
           naive_run: Throughput, service: Throughput, ceiling: float, points: list[Point], command: str) -> str:
    best = max(static, key=lambda t: t.tokens_per_s)
    lone = points[0]
    lines = [f"# The LLM service over Kafka ({date.today()}, {info.cpu_described})", "",
             f"SmolLM2-135M-Instruct, {precision()}, {rows} engine rows (`AIAAS_LLM_MODEL_INSTANCES`), chat "
             f"questions of mixed length, answer limits 16–256 tokens (seed {args.seed}), greedy; tracing on.",
             f"Command: `{command}`", "",
             "| how | jobs | output tokens | seconds | output tokens/s | x naive | of best static batch | "
             "of arithmetic ceiling |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in (naive_run, *static, engine, service):
        lines.append(f"| {row.name} | {row.jobs} | {row.tokens:,} | {row.seconds:.1f} | {row.tokens_per_s:,.1f} | "
                     f"{row.tokens_per_s / naive_run.tokens_per_s:.2f}x | {row.tokens_per_s / best.tokens_per_s:.2f} | "
                     f"{row.tokens_per_s / ceiling:.2f} |")
    lines += ["", "| offered load | jobs/s | jobs | output tokens/s | time to first token p50 / p99 ms | p50 / alone | "
              "time per output token p50 / p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for point in points:
        name = "one job at a time" if point.share == 0 else f"{point.share:.0%} of saturation"
        offered = "–" if point.share == 0 else f"{point.offered_per_s:.2f}"
        lines.append(f"| {name} | {offered} | {len(point.timings)} | {point.tokens_per_s:,.1f} | "
                     f"{_fmt(point.p('ttft_ms', 0.5))} / {_fmt(point.p('ttft_ms', 0.99))} | "
                     f"{point.p('ttft_ms', 0.5) / lone.p('ttft_ms', 0.5):.2f}x | "
                     f"{point.p('tpot_ms', 0.5):,.1f} / {point.p('tpot_ms', 0.99):,.1f} |")
    half = next(p for p in points if p.share == 0.5)
    lines += ["", "Targets (issue 24):",
              f"- service / naive consumer: {service.tokens_per_s / naive_run.tokens_per_s:.2f}x (target ≥ 5x);",
              f"- service / best static batch ({best.name.split(' (')[0]}): "
              f"{service.tokens_per_s / best.tokens_per_s:.2f} (target ≥ 0.8);",
              f"- time to first token p50 at 50 % load / alone: "
              f"{half.p('ttft_ms', 0.5) / lone.p('ttft_ms', 0.5):.2f}x (target ≤ 2x).", "",
              f"Service / the engine in this process: {service.tokens_per_s / engine.tokens_per_s:.2f} (not the same "
              "measure: the service's is a window of a closed loop that keeps its rows full, the engine's a batch of "
              "jobs run to its end, emptying rows included; so this says little of what Kafka costs).",
              f"Arithmetic ceiling: {ceiling:,.0f} tokens/s (bench/llm_engine.py's method: matrix-product FLOPs per "
              f"token against this machine's fp32 matmul rate at a batch of {rows}).",
              f"Saturation: {args.in_flight} jobs kept in flight for {args.saturation_s:.0f} s, measured after the "
              f"first {args.warm_up_s:.0f} s; open-loop points {args.point_s:.0f} s each, every job waited for.",
              f"Machine: {info.cpu_described}, Python {info.python}, "
              + ", ".join(f"{k} {v}" for k, v in info.versions.items()) + "."]
    if info.other_work:
        lines.append(f"Other work on the machine: {info.other_work[0]:.2f} cores on average (up to "
                     f"{info.other_work[1]:.2f}); hypervisor steal {info.stolen or 0:.2f} cores.")
    return "\n".join(lines) + "\n"


def plot(points: list[Point], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shares = [p.share * 100 for p in points]
    figure, (first, per_token) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, name, label in ((first, "ttft_ms", "time to first token (ms)"),
                              (per_token, "tpot_ms", "time per output token (ms)")):
        for q, style in ((0.5, "o-"), (0.99, "s--")):
            axis.plot(shares, [p.p(name, q) for p in points], style, label=f"p{round(q * 100)}")
        axis.set_xlabel("offered load (% of saturated jobs/s; 0 = one job at a time)")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


async def over_kafka(args: argparse.Namespace, broker: LocalBroker, home: Path, logs: Path
                     ) -> tuple[Throughput, Throughput, list[Point]]:
    pool = itertools.cycle(questions(1000, args.seed))
    naive_kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="bench-llm-naive")
    service_kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="bench-llm-service")
    for kafka in (naive_kafka, service_kafka):
        await prepare_topics(kafka, "llm")

    log(f"naive consumer: {args.naive_jobs} jobs")
    consumer = ChildProcess(["bench/naive.py", "--model", "llm"],
                            service_env(broker.bootstrap, naive_kafka.topic_prefix, home), logs / "naive.log",
                            marker="naive consumer ready:")
    await consumer.start_async(timeout=300)
    try:
        naive_run = await naive(naive_kafka, questions(args.naive_jobs, args.seed))
    finally:
        await consumer.terminate()
    log(f"  {naive_run.tokens_per_s:,.1f} tokens/s")

    service = ChildProcess(["-m", "aiaas.llm"], service_env(broker.bootstrap, service_kafka.topic_prefix, home),
                           logs / "service.log")
    await service.start_async(timeout=300)
    try:
        async with AiaasClient(service_kafka) as client:
            load = ServiceLoad(client, pool)
            await asyncio.gather(*(load.job() for _ in range(4)))  # warm-up, not reported
            log(f"service alone: {args.lone_jobs} jobs one after the other")
            points = [await alone(load, args.lone_jobs)]
            log(f"  time to first token p50 {points[0].p('ttft_ms', 0.5):,.0f} ms")
            log(f"service at saturation: {args.in_flight} jobs in flight, {args.saturation_s:.0f} s")
            throughput, jobs_per_s = await saturation(load, args.in_flight, args.saturation_s, args.warm_up_s)
            log(f"  {throughput.tokens_per_s:,.1f} tokens/s, {jobs_per_s:.2f} jobs/s")
            for share in SHARES:
                log(f"open loop at {share:.0%}: {share * jobs_per_s:.2f} jobs/s for {args.point_s:.0f} s")
                points.append(await open_loop(load, share, share * jobs_per_s, args.point_s))
                log(f"  time to first token p50 {points[-1].p('ttft_ms', 0.5):,.0f} ms, per output token p50 "
                    f"{points[-1].p('tpot_ms', 0.5):,.1f} ms")
    finally:
        await service.terminate()
    return naive_run, throughput, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ceiling-jobs", type=int, default=64)
    parser.add_argument("--static-batches", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16, 32, 64])
    parser.add_argument("--naive-jobs", type=int, default=12)
    parser.add_argument("--lone-jobs", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=48)
    parser.add_argument("--saturation-s", type=float, default=60.0)
    parser.add_argument("--warm-up-s", type=float, default=15.0)
    parser.add_argument("--point-s", type=float, default=45.0)
    parser.add_argument("--port", type=int, default=29692)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--machine", help="machine name in the file name (default: CPU model and core count)")
    args = parser.parse_args()
    command = " ".join([".venv/bin/python bench/llm_service.py", *sys.argv[1:]])

    info = MachineInfo.collect()
    rows = LlmSettings().model_instances
    tmp = Path(tempfile.mkdtemp(prefix="aiaas-llm-bench-"))
    home, logs = tmp / "home", tmp / "logs"
    logs.mkdir(parents=True)
    broker = LocalBroker(args.port, tmp / "kafka")
    other_work = OtherWork(lambda: {broker.pid} if broker.running and broker.pid else set())
    provider = setup_tracing("aiaas-bench", home=HomeSettings(home=home))
    other_work.start()
    try:
        registry = Registry(home / "registry")
        log("building the LLM into a temporary registry")
        build_model("llm", registry)
        log("runtime ceiling, in this process")
        (*static, engine), ceiling = in_process(registry, args, rows)
        log(f"starting the broker on {broker.bootstrap}")
        broker.start()
        naive_run, service, points = asyncio.run(over_kafka(args, broker, home, logs))
    finally:
        info.other_work = other_work.stop()
        info.stolen = other_work.stolen
        stop_all()
        provider.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(args, info, rows, static, engine, naive_run, service, ceiling, points, command)
    stem = f"{date.today()}-llm-service-{args.machine or machine_slug(info)}"
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"{stem}.png"
    title = f"aiaas llm service: latency against offered load — {info.cpu}, {info.cores} cores, {date.today()}"
    if plot(points, png, title):
        text += f"\n![time to first token and per output token against offered load]({png.name})\n"
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    log(f"wrote {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
