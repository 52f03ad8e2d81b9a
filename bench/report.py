"""The report: a Markdown table with absolute figures and ratios, details per stage, and a latency plot."""

from __future__ import annotations

import math
import os
import platform
import re
import socket
import statistics
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from aiaas.tracing.hops import HOPS

from .ceilings import RuntimeCeiling
from .load import OpenLoop, Saturation
from .procs import MACHINE, broker_jvm_opts, kafka_version
from .stops import Stops, stops_table, stops_title
from .workloads import settings_class

__all__ = ["ModelResult", "MachineInfo", "markdown", "plot", "machine_slug", "level_name"]


@dataclass
class ModelResult:
    """Everything measured for one model type."""

    model: str
    max_batch: int
    runtime: list[RuntimeCeiling] = field(default_factory=list)
    runtime_in_rounds: Saturation | None = None
    """The served runtime at the sweep's best batch size (at least max_batch) again, as a consumer of the rounds of
    bursts."""
    transport: Saturation | None = None
    naive: Saturation | None = None
    service: Saturation | None = None
    service_untraced: Saturation | None = None
    service_client: Saturation | None = None
    """The traced service driven by AiaasClient (with --load raw; with --load client `service` is that already)."""
    open_loop: list[OpenLoop] = field(default_factory=list)
    alone: OpenLoop | None = None
    """Latency of jobs arriving one at a time (a trickle): one small batch's model time + the Kafka round trip."""
    stops: dict[str, Stops | None] = field(default_factory=dict)
    """Latency level (`level_name`) → the traced service's own stops over its rounds (None: its metrics unread)."""
    span_share: float | None = None
    """Spans the traced service stored / spans it made (below 1: the export queue dropped some)."""
    seconds: float = 0.0

    @property
    def served_runtime(self) -> RuntimeCeiling | None:
        """The ONNX Runtime ceiling (what the service serves by default)."""
        return next((r for r in self.runtime if r.backend == "onnx" and r.points), None)


@dataclass
class MachineInfo:
    """Where and with what the numbers were taken."""

    cpu: str
    cores: int
    python: str
    versions: dict[str, str]
    host: str
    load_before: tuple[float, float, float]
    other_work: tuple[float, float] | None = None
    """Cores used by processes that are not this run's: (mean, max) over the run."""
    stolen: float | None = None
    """Cores the hypervisor gave to other guests, on average over the run (/proc/stat steal)."""
    vector_extensions: tuple[str, ...] = ()
    """The CPU's vector/matrix extensions that decide its fp32 and int8 rates (see `vector_extensions`)."""

    @property
    def cpu_described(self) -> str:
        """"<model name>, <n> cores (<extensions>)": this VM's CPU model differs from one CI machine to the next."""
        extensions = f" ({', '.join(self.vector_extensions)})" if self.vector_extensions else ""
        return f"{self.cpu}, {self.cores} cores{extensions}"

    @classmethod
    def collect(cls) -> MachineInfo:
        """CPU from /proc/cpuinfo, package versions from the installed distributions."""
        cpu = cpu_name()
        versions = {}
        for dist in ("onnxruntime", "onnxruntime-gpu", "torch", "aiokafka", "faststream", "opentelemetry-sdk", "numpy"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return cls(cpu, os.cpu_count() or 0, platform.python_version(), versions, socket.gethostname(), os.getloadavg(),
                   vector_extensions=vector_extensions())


def machine_slug(info: MachineInfo) -> str:
    """A file-name-safe machine name: CPU model and core count (the host name is random in containers)."""
    cpu = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b", "", info.cpu, flags=re.IGNORECASE)
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    return f"{cpu}-{info.cores}c"


def _rate(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "–"
    return f"{a / b:.2f}"


def round_ratios(numerator: Saturation | None, *denominators: Saturation | float | None) -> list[float]:
    """Per round of bursts: the numerator's jobs/s ÷ the smallest of the denominators' in the same round (a float
    denominator, e.g. a sweep's figure, counts in every round; None or a consumer without bursts does not count).
    Every consumer of one `saturate` call has one burst per round, so each ratio compares the same minutes of the
    machine. Empty when there is nothing to divide, or when a denominator's rounds are not the numerator's; NaN
    for a round whose denominator is 0."""
    if numerator is None or not numerator.bursts:
        return []
    rounds = len(numerator.bursts)
    per_round = []
    for d in denominators:
        if isinstance(d, Saturation) and d.bursts:
            if len(d.bursts) != rounds:
                return []  # not measured in the same rounds: no ratio rather than a different one
            per_round.append([b.jobs_per_s for b in d.bursts])
        elif isinstance(d, (int, float)) and not math.isnan(d):
            per_round.append([float(d)] * rounds)
    if not per_round:
        return []
    return [b.jobs_per_s / min(column) if min(column) > 0 else math.nan
            for b, column in zip(numerator.bursts, zip(*per_round, strict=True), strict=True)]


def _measured(ratios: list[float]) -> list[float]:
    return [x for x in ratios if not math.isnan(x)]


def _median_ratio(ratios: list[float]) -> str:
    measured = _measured(ratios)
    return f"{statistics.median(measured):.2f}" if measured else "–"


def _latency(point: OpenLoop | None) -> str:
    if point is None:
        return "–"
    return f"{point.p50_ms:.1f} / {point.p95_ms:.1f} / {point.p99_ms:.1f}"


def markdown(results: list[ModelResult], info: MachineInfo, *, command: str, total_s: float, quick: bool,
             transport_mode: str, load: str, notes: list[str], burst_s: float, repeats: int, open_loop_s: float,
             latency_rounds: int = 1) -> str:
    """The whole report."""
    ort = info.versions.get("onnxruntime") or info.versions.get("onnxruntime-gpu", "?")
    shares = sorted({p.share for r in results for p in r.open_loop}) or [0.25, 0.5, 0.75]
    lines = [
        f"# aiaas benchmark — {time.strftime('%Y-%m-%d %H:%M')}"
        + (" (quick smoke run: small N, not for comparison)" if quick else ""),
        "",
        f"{info.cpu_described} · Python {info.python} · ONNX Runtime {ort} · "
        + " · ".join(f"{k} {v}" for k, v in info.versions.items() if not k.startswith("onnxruntime")),
        f"Host {info.host}; load average (1/5/15 min) {_load(info.load_before)} before the run; "
        + (f"other processes used {info.other_work[0]:.2f} cores on average (max {info.other_work[1]:.2f}) during it. "
           if info.other_work else "")
        + (f"The hypervisor took {info.stolen:.2f} cores on average from this VM for other guests (steal time). "
           if info.stolen is not None else "")
        + f"Run: `{command}` in {total_s / 60:.1f} min.",
        "",
        "| model | runtime ceiling items/s (batch; in the rounds) | transport ceiling jobs/s | naive jobs/s "
        "| service jobs/s | service / min(runtime, transport) | service / naive | "
        + " | ".join(f"p50/p95/p99 ms @ {s:.0%}" for s in shares)
        + " | p50 ms one at a time | p50 @ 25% / one at a time | tracing on/off | service via AiaasClient jobs/s |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(shares) + "---:|---:|---:|---:|",
    ]
    for r in results:
        runtime = r.served_runtime
        best = runtime.best if runtime else None
        service = r.service.jobs_per_s if r.service else None
        transport = r.transport.jobs_per_s if r.transport else None
        in_rounds = r.runtime_in_rounds.jobs_per_s if r.runtime_in_rounds and r.runtime_in_rounds.bursts else None
        by_share = {p.share: p for p in r.open_loop}
        via_client = (_rate(r.service_client.jobs_per_s) if r.service_client
                      else "= service" if load == "client" else "–")
        lines.append(
            f"| {r.model} | {_rate(best.items_per_s) if best else '–'} ({best.batch if best else '–'})"
            + (f"; {_rate(in_rounds)} ({r.runtime_in_rounds.bursts[0].mean_batch:.0f}) in the rounds "
               if in_rounds is not None else " ")
            + f"| {_rate(transport)} | {_rate(r.naive.jobs_per_s if r.naive else None)} | {_rate(service)} "
            f"| {_median_ratio(ceiling_ratios(r))} | {_median_ratio(round_ratios(r.service, r.naive))} | "
            + " | ".join(_latency(by_share.get(s)) for s in shares)
            + f" | {r.alone.p50_ms if r.alone else float('nan'):.1f} "
            f"| {_ratio(by_share[0.25].p50_ms if 0.25 in by_share else None, r.alone.p50_ms if r.alone else None)} "
            f"| {_median_ratio(round_ratios(r.service, r.service_untraced))} "
            f"| {via_client} |"
        )
    lines += ["", *_compute_table(results)]
    lines += ["", *_legend(transport_mode, load, burst_s, repeats, open_loop_s, latency_rounds), ""]
    if notes:
        lines += ["Notes on this run:", "", *[f"- {n}" for n in notes], ""]
    for r in results:
        lines += _details(r)
    return "\n".join(lines) + "\n"


def _compute_table(results: list[ModelResult]) -> list[str]:
    """The served runtime's arithmetic against this CPU's fp32 matmul rate (bench/compute.py), where it was measured."""
    measured = [(r, r.served_runtime.compute) for r in results if r.served_runtime and r.served_runtime.compute]
    if not measured:
        return []
    lines = ["How close each runtime runs to this CPU's arithmetic (bench/compute.py, the served runtime at its best "
             "batch size): matrix-product FLOPs per item as served; its rate against the machine's fp32 matmul rate, "
             "timed in alternation; the products' share of ONNX Runtime's kernel time (a profile); the headroom: how "
             "many times faster the runtime would be with its products at the matmul rate and the rest of its time as "
             "measured. The runtime's own ratio to the naive consumer (in the rounds of bursts) times that headroom "
             "is the most `service / naive` could be on this machine with this model at this precision and with "
             "the runtime's calls as they are made (batch size and, for text, the padding of its length groups: "
             "padded token slots count as work; fewer of them is a serving-layer gain this bound does not see).",
             "",
             "| model | batch | MFLOP/item | runtime GFLOP/s | fp32 matmul GFLOP/s (fastest library, shape) "
             "| runtime / matmul rate | products' share of kernel time | headroom | runtime / naive (rounds) "
             "| most service / naive |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, c in measured:
        best = max(c.matmul, key=lambda m: m.gflops)
        runtime_naive = _measured(round_ratios(r.runtime_in_rounds, r.naive))
        most = statistics.median(runtime_naive) * c.headroom if runtime_naive and c.headroom else None
        lines.append(f"| {r.model} | {c.batch} | {c.flops_per_item / 1e6:.3f} | {c.runtime_gflops_median:.1f} "
                     f"| {c.matmul_gflops:.0f} ({best.how}) | {c.share:.0%} "
                     f"| {'–' if c.product_share is None else f'{c.product_share:.0%}'} "
                     f"| {'–' if c.headroom is None else f'{c.headroom:.2f}'} "
                     f"| {_median_ratio(round_ratios(r.runtime_in_rounds, r.naive))} "
                     f"| {'–' if most is None else f'{most:.2f}'} |")
    return lines


def ceiling_ratios(r: ModelResult) -> list[float]:
    """service / min(runtime, transport) per round: the runtime as measured in the rounds, or the sweep's best
    where it was not (a run without the sweep's figure compares with the transport alone)."""
    runtime = r.runtime_in_rounds if r.runtime_in_rounds and r.runtime_in_rounds.bursts else (
        r.served_runtime.best.items_per_s if r.served_runtime and r.served_runtime.best else None)
    return round_ratios(r.service, runtime, r.transport)


ALONE_PER_S = 20
"""Arrival rate of the one-at-a-time latency (50 ms apart: no job waits for another)."""


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def _legend(transport_mode: str, load: str, burst_s: float, repeats: int, open_loop_s: float,
            latency_rounds: int = 1) -> list[str]:
    where = ("a child process (load generator and service in separate processes, as for the service)"
             if transport_mode == "subprocess"
             else "the benchmark's own process (it shares one event loop with the load generator)")
    generator = (
        "pre-encoded job envelopes (each with its own `traceparent`) published with a plain aiokafka producer "
        "(acks=all, idempotent, linger 2 ms, as AiaasClient's), results read by key with a plain consumer: it "
        "publishes far faster than any consumer here drains (see publish/s below), so the consumer under test is "
        "the limit"
        if load == "raw" else
        "`AiaasClient` (submit, at most 64 awaiting their acknowledgement; `JobHandle.latency_ms`), tracing on in "
        "this process too; one client process may be the limit (see publish/s below)")
    return [
        "How each column is measured (all in this one run, on this machine, against one local Kafka "
        f"{kafka_version()} broker, JVM options `{broker_jvm_opts()}` (infra/kafka/kafka.sh); "
        "each stage on its own topic prefix):",
        "",
        "- **runtime ceiling**: the runtime's `infer` alone on in-memory prepared batches (ONNX Runtime, as served), "
        "median per batch size 1…256; best items/s and its batch size. Per-size figures and other backends below. "
        "Then the same call at that batch size (or the service's max_batch where that is larger) once more as one "
        "of the consumers of the rounds of bursts described "
        "below (\"in the rounds\", for ~the burst length, in a thread of the benchmark's own process), and the ratio "
        "service / min(runtime, transport) uses that figure: the sweep runs minutes before the bursts, and this VM's "
        "speed drifts by up to 2× over minutes.",
        f"- **load generator** for transport, naive and service: {generator}.",
        "- **transport ceiling**: the real `ModelService` with a no-op runtime (empty outputs) in "
        f"{where}, tracing on (local span store).",
        "- **naive**: a one-message-at-a-time FastStream subscriber (decode → prepare → infer([item]) → publish, "
        "no tracing) with the same runtime, in a child process.",
        "- **service**: `python -m aiaas.<model>` as a child process, defaults (tracing to the local span store).",
        "- Throughputs: bursts of N jobs published at once and every result awaited; "
        "N / (last result − first publish). "
        "Transport, naive, service with tracing on and with export off run at once, each on its own topics, and are "
        "measured in rounds of one burst each (the others idle meanwhile; each round starts with the next consumer), "
        "so every ratio compares the same minutes of the machine. "
        f"A pilot burst per consumer warms it up and sizes its N for ~{burst_s:g} s; {repeats} round(s) (a round "
        f"with a burst under 75 % of {burst_s:g} s is discarded and that burst re-sized). jobs/s: the median of a "
        "consumer's bursts. Ratios: the median over the rounds of each round's own ratio (per round below each "
        "model), not the ratio of the medians, so a slow minute counts on both sides of a ratio.",
        "- **p50/p95/p99**: publish → result received, per job, at a fixed arrival rate "
        f"(open loop, {open_loop_s:g} s) of "
        "25/50/75 % of the service's saturated throughput"
        + (f"; {latency_rounds} rounds, each running every level (one at a time too) in turn, and each percentile is "
           "the median of the rounds' (the range of their p99s beside it): one run's p99 is set by the worst stall "
           "of a few seconds, so it is a noisy sample. The hop table pools the rounds' jobs."
           if latency_rounds > 1 else "."),
        f"- **one at a time**: the same at {ALONE_PER_S} jobs/s, so every job is alone in its batch: one small batch's "
        "model time plus the Kafka round trip (publish → broker → service → broker → reader), both measured, not "
        "estimated. The latency target is p50 @ 25 % ≤ 2 × this.",
        "- **tracing on/off**: service throughput with the default tracing (spans exported to the local span store) "
        "divided by the same with `OTEL_TRACES_EXPORTER=none` (measured side by side, as above). "
        "\"Off\" is export off only: `setup_tracing` still installs the SDK TracerProvider "
        "(without a span processor), so spans are still created, sampled, given attributes and links, and trace "
        "context still travels in headers; they are dropped when they end instead of being queued, serialised and "
        "written.",
        "- **service via AiaasClient**: the traced service again, bursts published with `AiaasClient` from this "
        "(traced) process: what one Python client process gets end to end.",
    ]


def _details(r: ModelResult) -> list[str]:
    lines = [f"## {r.model}", "", f"Measured in {r.seconds:.0f} s. Service `max_batch` {r.max_batch}.", ""]
    measured = [c for c in r.runtime if c.points]
    if measured:
        sizes = sorted({p.batch for c in measured for p in c.points})
        lines += ["Runtime ceiling (median of repeated calls after warm-up):", "",
                  "| batch | " + " | ".join(f"{c.backend} items/s | {c.backend} ms/batch" for c in measured) + " |",
                  "|---:|" + "---:|---:|" * len(measured)]
        for size in sizes:
            cells = []
            for c in measured:
                point = next((p for p in c.points if p.batch == size), None)
                cells += [_rate(point.items_per_s), f"{point.ms_per_batch:.3f}"] if point else ["–", "–"]
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
        lines.append("")
        for c in r.runtime:
            if c.note:
                lines.append(f"- {c.backend}: {c.note}")
        served = r.served_runtime
        at_max = served.at(r.max_batch) if served else None
        if at_max:
            lines.append(f"- ONNX Runtime at the service's max_batch ({at_max.batch}): "
                         f"{_rate(at_max.items_per_s)} items/s")
        lines.append("")
    instances = settings_class(r.model)().model_instances
    rows = [(f"runtime alone (batch {r.runtime_in_rounds.bursts[0].mean_batch:.0f}"
             f"{f', {instances} instances at once' if instances > 1 else ''}, no Kafka)", r.runtime_in_rounds)
            if r.runtime_in_rounds and r.runtime_in_rounds.bursts else ("", None),
            ("transport (no-op model)", r.transport), ("naive FastStream consumer", r.naive),
            ("service, tracing on", r.service), ("service, tracing export off", r.service_untraced),
            ("service via AiaasClient", r.service_client)]
    lines += ["Saturated bursts:", "",
              "| consumer | jobs/s (median) | bursts min–max | jobs per burst | mean batch | publish/s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, sat in rows:
        if sat and sat.bursts:
            batch = f"{sat.mean_batch:.1f}" if sat.mean_batch > 0 else "–"
            published = "–" if sat is r.runtime_in_rounds else _rate(sat.publish_per_s)
            lines.append(f"| {name} | {_rate(sat.jobs_per_s)} | {sat.spread()} | {sat.bursts[0].jobs:,} | {batch} "
                         f"| {published} |")
    lines.append("")
    per_round = [("service / min(runtime, transport)", ceiling_ratios(r)),
                 ("service / naive", round_ratios(r.service, r.naive)),
                 ("tracing on/off", round_ratios(r.service, r.service_untraced))]
    if any(ratios for _, ratios in per_round):
        rounds = max(len(ratios) for _, ratios in per_round)
        lines += ["Ratios per round of bursts (the table gives their median):", "",
                  "| ratio | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median | min–max |",
                  "|---|" + "---:|" * (rounds + 2)]
        for name, ratios in per_round:
            if _measured(ratios):
                cells = ["–" if math.isnan(x) else f"{x:.2f}" for x in ratios] + ["–"] * (rounds - len(ratios))
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {_median_ratio(ratios)} "
                             f"| {min(_measured(ratios)):.2f}–{max(_measured(ratios)):.2f} |")
        lines.append("")
    if r.open_loop:
        lines += ["Open-loop latency (publish → result received):", "",
                  "| offered | target jobs/s | achieved jobs/s | jobs | p50 ms | p95 ms | p99 ms | p99 of the rounds "
                  "| mean batch | publisher max lag ms |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in ([r.alone] if r.alone else []) + r.open_loop:
            spread = f"{p.p99_range[0]:.1f}–{p.p99_range[1]:.1f}" if p.p99_range else "–"
            lines.append(f"| {level_name(p.share)} | {_rate(p.target_per_s)} "
                         f"| {_rate(p.achieved_per_s)} | {p.jobs:,} "
                         f"| {p.p50_ms:.1f} | {p.p95_ms:.1f} | {p.p99_ms:.1f} | {spread} | {p.mean_batch:.1f} "
                         f"| {p.max_lag_ms:.1f} |")
        lines.append("")
        lines += _hop_table([p for p in ([r.alone] if r.alone else []) + r.open_loop if p.hops])
        lines += _cores_table([p for p in ([r.alone] if r.alone else []) + r.open_loop if p.cores])
        if r.stops:
            lines += [stops_title("at each level, over its rounds"), "",
                      stops_table([(r.model, level, found) for level, found in r.stops.items()],
                                  labels=("model", "offered")), ""]
    if r.span_share is not None:
        lines += [f"The traced service stored {r.span_share:.0%} of the spans it made (2 per job: `process` and "
                  "`send …results`, 1 per batch: `infer`; below 100 % the span processor's queue was full and "
                  "dropped spans, which makes tracing look cheaper than exporting them all).", ""]
    return lines


def level_name(share: float) -> str:
    """How the report names a latency level: its share of the saturated throughput, or one job at a time (0)."""
    return f"{share:.0%}" if share else "one at a time"


def _hop_table(points: list[OpenLoop]) -> list[str]:
    """Where each level's time went, from the traces: each hop's p50 / p99 and the hop the slowest 1 % spent most in
    (`aiaas trace --stats`'s hops: services/aiaas/tracing/hops.py)."""
    if not points:
        return []
    hops = [hop for hop in HOPS if any(hop in p.hops for p in points)]
    lines = ["Where the time went, from the traces (ms, p50 / p99 of each hop; the hops of a job add up to its end to "
             "end; the last column: the hop that held most of the slowest 1 %'s time, and its share):", "",
             "| offered | " + " | ".join(hops) + " | slowest 1 % mostly in |",
             "|---:|" + "---:|" * len(hops) + "---|"]
    for p in points:
        cells = [f"{p.hops[hop].p50:.1f} / {p.hops[hop].p99:.1f}" if hop in p.hops else "–" for hop in hops]
        slow = p.slowest
        most = (f"{slow.most} ({slow.mean_ms[slow.most] / (sum(slow.mean_ms.values()) or 1):.0%})"
                if slow and slow.mean_ms else "–")
        lines.append(f"| {level_name(p.share)} | " + " | ".join(cells) + f" | {most} |")
    return [*lines, ""]


CORE_USERS = ("service", "broker", "load generator", "results reader")
"""The processes whose cores `_cores_table` shows, in its order (`bench/run.py` meters them: `core_meter`)."""


def _cores_table(points: list[OpenLoop]) -> list[str]:
    """What ran on the cores at each level: each process's cores and the machine's busy ones, while the jobs were
    published (the median over the rounds). At a partial load the broker and the load generator pay per request, and
    a request then carries few jobs: on a small machine they take cores a saturated burst leaves to the service."""
    if not points:
        return []
    cores, tick_ms = os.cpu_count() or 0, 1000 / os.sysconf("SC_CLK_TCK")
    lines = ["What ran on the cores at each level, while its jobs were published (cores: CPU seconds per second from "
             f"/proc, in ticks of {tick_ms:g} ms; each column the median of the rounds' own, so they need not add up; "
             "load generator: the benchmark's own process, which publishes; the rest: each round's busy cores less the "
             f"four's, 0 where the ticks make it negative; busy: all of its {cores} cores' work for this VM, not idle "
             "and not the hypervisor's for other guests):", "",
             "| offered | " + " | ".join(CORE_USERS) + " | the rest | busy cores |",
             "|---:|" + "---:|" * (len(CORE_USERS) + 2)]
    for p in points:
        named = [p.cores.get(name) for name in CORE_USERS]
        rest = _rest_of_the_cores(p.rounds or [p])
        cells = [f"{c:.2f}" if c is not None else "–" for c in (*named, rest, p.cores.get(MACHINE))]
        lines.append(f"| {level_name(p.share)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _rest_of_the_cores(rounds: list[OpenLoop]) -> float | None:
    """The median over `rounds` of each round's busy cores less its named processes' (not below 0)."""
    each = [max(r.cores[MACHINE] - sum(r.cores.get(name, 0.0) for name in CORE_USERS), 0.0)
            for r in rounds if MACHINE in r.cores]
    return float(statistics.median(each)) if each else None


def plot(results: list[ModelResult], path: Path, title: str) -> bool:
    """Latency vs offered load, one line (p50) per model type with a p50–p99 band; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        if not r.open_loop:
            continue
        xs = [p.share * 100 for p in r.open_loop]
        rates = "/".join(f"{p.achieved_per_s:,.0f}" for p in r.open_loop)
        label = (f"{r.model} p50 (offered {rates} jobs/s"
                 + (f"; saturated {r.service.jobs_per_s:,.0f})" if r.service else ")"))
        line, = ax.plot(xs, [p.p50_ms for p in r.open_loop], marker="o", label=label)
        ax.fill_between(xs, [p.p50_ms for p in r.open_loop], [p.p99_ms for p in r.open_loop], color=line.get_color(),
                        alpha=0.15, label=f"{r.model} p50–p99")
    ax.set_xlabel("offered load (% of the service's saturated throughput)")
    ax.set_ylabel("latency publish → result received (ms)")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


NOTABLE_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
"""/proc/cpuinfo flags that set the runtimes' kernels: AVX2 or AVX-512 fp32, VNNI int8, bf16/fp16, AMX tiles."""


def vector_extensions(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The NOTABLE_EXTENSIONS this CPU has, in that order (none where /proc/cpuinfo cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ()
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())
    return tuple(name for name in NOTABLE_EXTENSIONS if name in flags)


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo (the platform's name where there is none)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())
