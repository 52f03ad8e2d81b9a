"""Priority flood: urgent jobs' latency alone, and while normal jobs flood the vision service past its capacity.

    .venv/bin/python bench/priority_flood.py [--runs 3] [--probe-rate 50] [--solo-s 20] [--flood-jobs 60000]
                                             [--flood-rate 0] [--no-control] [--noop] [--port 29992] [--out FILE]

The issue's target: jobs of high priority keep their lone-job p99 within 3x while jobs of low priority flood the
service. A job of priority > 0 goes to the urgent lane `<prefix>.vision.infer-urgent` with its `aiaas.priority`
header; the service fetches that lane first, keeps part of its in-flight window for it and cuts its jobs into the
next batch first (`contract/priority.py`, `serving/pipeline.py`, `serving/job_queue.py`). Each run has its own
topic prefix and its own `python -m aiaas.vision` on a broker of this program's own, and reuses
bench/tenant_flood.py's parts (its flood process, prober, warm-up and capacity burst). All topics are untenanted:

1. **capacity**: after a warm-up, the flood process (`tenant_flood.py flood`) publishes `--capacity-jobs` normal
   jobs as fast as it can to `<prefix>.vision.infer`; capacity = jobs / (first publish → the last of their results
   in `<prefix>.vision.results`).
2. **alone**: the prober publishes urgent jobs (priority 1 in the job and in the header) to the urgent lane at
   `--probe-rate` jobs/s (open loop: job i at t0 + i/rate) for `--solo-s`. Latency per job = publish start → its
   result read, in this process. The prober's jobs ask for their results on `<prefix>.vision.results.probe-urgent`
   (`reply_to`): it reads only its own, and the flood's results topic holds only the flood's.
3. **flood**: the prober goes on while the flood process publishes `--flood-jobs` normal jobs (priority 0) to the
   infer topic as fast as its producer takes them, or at `--flood-rate`, or at `--flood-times-capacity` X times the
   capacity of step 1. Probe jobs published from the flood's first publish until its last result was written count
   as "during the flood"; flood jobs / that time is the rate the service drained them at beside the probe (low
   priority is slowed, not starved).
4. **control** (unless `--no-control`): 2 and 3 again with a prober of normal jobs (priority 0, no header, on the
   infer topic, answered on `….results.probe-normal`): what the lane buys.

Prints a row per run and lane, then the medians; `--out FILE` writes the table (Markdown) with the command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.contract.priority import priority_headers
from aiaas.contract.topics import ModelTopics, service_topics
from aiaas.kafka.admin import ensure_topics
from aiaas.settings import KafkaSettings
from bench.stops import Stops, stops_table, stops_title
from bench.tenant_flood import (
    Bench,
    Prober,
    common_options,
    flood_pace,
    log,
    percentile,
    report_context,
    run_benchmark,
    service_note,
    write_report,
)

__all__ = ["main"]

LANES = {"urgent": 1, "normal": 0}
"""Prober → the priority of its jobs (above 0: the urgent lane). `normal` is the control."""


@dataclass
class Lane:
    """One prober's figures in one run."""

    solo: list[float] = field(default_factory=list)
    """Latencies (ms) of its jobs alone."""
    during: list[float] = field(default_factory=list)
    """… and of those published during the flood."""
    published: float = float("nan")
    """Flood jobs / the seconds its process published for: jobs/s."""
    drained: float = float("nan")
    """Flood jobs / (the flood's first publish → its last result): jobs/s."""
    missing: int = 0
    """Its jobs without a result at the end."""
    cut: list[float] = field(default_factory=list)
    """During the flood, per job: ms from its publish to its batch being cut (`timings.queue_wait_ms`)."""
    read: list[float] = field(default_factory=list)
    """… and ms from the model call's end to its result read here."""
    stops: dict[str, Stops | None] = field(default_factory=dict)
    """"alone", "during the flood" → the service's own stops then (None: its metrics could not be read)."""

    @property
    def ratio(self) -> float:
        """p99 during the flood / alone."""
        return percentile(self.during, 99) / percentile(self.solo, 99)


@dataclass
class RunResult:
    """One run's figures."""

    capacity: float = float("nan")
    lanes: dict[str, Lane] = field(default_factory=dict)
    other_cores: float | None = None


class PriorityBench(Bench):
    """tenant_flood's broker, service and flood process, on the untenanted topics, with a prober per lane."""

    async def one_run(self, number: int) -> RunResult:
        """Capacity, then for each lane its prober alone and during a flood; a fresh prefix and service."""
        args, result = self.args, RunResult()
        kafka = self.settings(f"pf{number}")
        topics = ModelTopics.of("vision", kafka.topic_prefix)
        await ensure_topics(kafka, service_topics("vision", kafka) + [_reply_topic(topics, lane) for lane in LANES])
        async with self.serving(kafka, result):
            await self.warm_up(kafka, topics.infer, topics.results)
            log(f"run {number}: capacity burst of {args.capacity_jobs:,} normal jobs")
            result.capacity = await self.capacity(kafka, topics.infer, topics.results)
            log(f"run {number}: capacity {result.capacity:,.0f} jobs/s")
            for lane in LANES if args.control else ["urgent"]:
                result.lanes[lane] = await self.probed_flood(kafka, f"run {number}: {lane} probe", lane,
                                                             self.flood_rate(result.capacity))
        return result

    async def probed_flood(self, kafka: KafkaSettings, what: str, lane: str, rate: float) -> Lane:
        """`lane`'s prober alone, then during a flood of normal jobs at `rate` jobs/s (0: as fast as it goes)."""
        args, topics, figures = self.args, ModelTopics.of("vision", kafka.topic_prefix), Lane()
        async with _prober(kafka, args.probe_rate, lane) as prober:
            await self.prober_ready(kafka, prober)
            before_solo = await self.service_metrics()
            solo_from, solo_until = await self.alone(prober, what)
            before_flood = await self.service_metrics()
            log(f"{what} during a flood of {args.flood_jobs:,} normal jobs")
            flood_from, publish_s, flood_until = await self.burst(kafka, f"flood-{lane}", args.flood_jobs, rate,
                                                                  topics.infer, topics.results)
            figures.stops = {"alone": Stops.between(before_solo, before_flood),
                             "during the flood": Stops.between(before_flood, await self.service_metrics())}
            await prober.stop_publishing()
        figures.solo = prober.latencies_ms(solo_from, solo_until)
        figures.during = prober.latencies_ms(flood_from, flood_until)
        figures.cut, figures.read = prober.parts_ms(flood_from, flood_until)
        figures.published = args.flood_jobs / publish_s
        figures.drained = args.flood_jobs / (flood_until - flood_from)
        figures.missing = len(set(prober.sent) - set(prober.received))
        return figures


def _reply_topic(topics: ModelTopics, lane: str) -> str:
    """Where `lane`'s prober has its results (`reply_to`)."""
    return f"{topics.results}.probe-{lane}"


def _prober(kafka: KafkaSettings, rate: float, lane: str) -> Prober:
    """The open-loop prober of `lane`: jobs of its priority, on the topic and with the header that priority gets."""
    priority, topics = LANES[lane], ModelTopics.of("vision", kafka.topic_prefix)
    results = _reply_topic(topics, lane)
    return Prober(kafka, rate, lane, topics.job_topic(None, urgent=priority > 0), results,
                  headers=priority_headers(priority), job={"priority": priority, "reply_to": results})


def _row(number: int, r: RunResult) -> str:
    """A row per lane of run `number`."""
    p = percentile
    return "\n".join(
        f"| {number} | {lane} | {r.capacity:,.0f} | {x.published:,.0f} | {x.drained:,.0f} | {len(x.solo)} "
        f"| {p(x.solo, 50):.1f} | {p(x.solo, 99):.1f} | {len(x.during)} | {p(x.during, 50):.1f} "
        f"| {p(x.during, 99):.1f} | **{x.ratio:.2f}x** "
        f"| {p(x.cut, 99):.1f} | {p(x.read, 99):.1f} "
        f"| {x.missing} | {'–' if r.other_cores is None else f'{r.other_cores:.2f}'} |" for lane, x in r.lanes.items())


HEADER = ("| run | probe | capacity (jobs/s) | flood published at (jobs/s) | flood drained at (jobs/s) "
          "| probe alone: jobs | p50 ms | p99 ms "
          "| probe during flood: jobs | p50 ms | p99 ms | p99 flood / alone | of which publish → batch cut: p99 ms "
          "| model done → result read: p99 ms | probe missing | other work (cores) |")
RULE = "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def _medians(results: list[RunResult], lane: str) -> str:
    """One lane's medians over the runs."""
    med, lanes = statistics.median, [r.lanes[lane] for r in results]
    return (f"{lane} probe: p50/p99 alone {med(percentile(x.solo, 50) for x in lanes):.1f}/"
            f"{med(percentile(x.solo, 99) for x in lanes):.1f} ms, during the flood "
            f"{med(percentile(x.during, 50) for x in lanes):.1f}/{med(percentile(x.during, 99) for x in lanes):.1f} "
            f"ms, p99 ratio {med(x.ratio for x in lanes):.2f}x (runs: {', '.join(f'{x.ratio:.2f}x' for x in lanes)}), "
            f"flood drained at {med(x.drained for x in lanes):,.0f} jobs/s")


def table(results: list[RunResult]) -> str:
    """Rows per run and lane; the medians of the per-run figures when there are several runs."""
    lines = [HEADER, RULE, *(_row(i + 1, r) for i, r in enumerate(results))]
    if len(results) > 1:
        lines.append(f"\nMedian over runs (capacity {statistics.median(r.capacity for r in results):,.0f} jobs/s; "
                     "target: the urgent probe's p99 ratio ≤ 3x):\n")
        lines += [f"* {_medians(results, lane)}" for lane in results[0].lanes]
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-rate", type=float, default=50.0, help="the prober's jobs/s (open loop)")
    parser.add_argument("--solo-s", type=float, default=20.0, help="how long each prober runs alone")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                        help="also probe with normal jobs (the control: what the urgent lane buys)")
    common_options(parser, port=29992)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table."""
    args = _parse(argv)
    results = run_benchmark(args, PriorityBench, _row, "priority-flood")
    stops = [(f"{i} ({lane} probe)", phase, found) for i, r in enumerate(results, 1) for lane, x in r.lanes.items()
             for phase, found in x.stops.items()]
    machine, command, settings = report_context("priority_flood.py", argv)
    how = flood_pace(args, "it")
    text = (f"Priority flood ({machine}): a probe of urgent jobs (priority 1) at {args.probe_rate:g} jobs/s alone for "
            f"{args.solo_s:g} s, then while {args.flood_jobs:,} normal jobs are published {how}"
            f"{'; the control: the same with a probe of normal jobs' if args.control else ''}{settings}."
            f"{service_note(args)}\n"
            f"Command: `{command}`\n\n{table(results)}\n\n{stops_title('in each phase')}\n\n{stops_table(stops)}")
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
