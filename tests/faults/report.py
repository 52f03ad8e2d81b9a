"""The fault suite's table: one row per scenario and delivery mode, the column definitions, the details."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

from bench.report import cpu_name
from tests.harness import REPO

from .scenarios import Row

__all__ = ["table", "markdown", "machine", "machine_slug"]

HEADER = ("| scenario | mode | jobs sent | jobs with a result | lost | duplicate results in topic "
          "| duplicates seen by client | service restarts caused by input | DLQ records | wall time | bad inputs sent "
          "| reader missed | rewinds |")
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

LEGEND = """\
- **scenario**: 1 kill -9 the worker at three random points (restarted at once, same instance id);
  2 SIGTERM the worker mid-stream (restarted); 3 stop the broker mid-stream and start it again
  (same data); 4 start a second worker (its own instance id) mid-stream, SIGTERM it later;
  5 kill -9 the results reader at two random points and resume it; 6 the hostile corpus
  (`tests/hostile_corpus.py`) spread evenly between the good jobs; 7 hostile headers between the good
  jobs, 3 of each case (`load.hostile_headers`: null `traceparent` and `aiaas.attempt`, non-UTF-8 `aiaas.*`
  values, junk/oversized/repeated `traceparent`, `tracestate` and `baggage`, 5,000 headers, control characters
  in `aiaas.*` values, header keys and record keys; retry-topic records with null or no retry headers), each
  checked against the outcome it must have (InvalidHeaders error result + dead letter; `ok` for headers aiaas
  does not read; a dead letter alone for a key that cannot be a job id); 8 jobs whose `reply_to` is `.`, `..`,
  `<prefix>.dlq`, `<prefix>.text.results` (created) or `<prefix>.vision.results.nobody` (not created) between
  the good jobs, 3 of each: each must get a RefusedReplyTo error result on the results topic and a dead letter,
  and the workers must not rewind; 9 as 4, with the service's model failing once per worker process on every
  20th job (`tests/integration/flaky_vision.py`: a retriable ModelFailure, retried through the retry topic
  after 1 s): retries are waiting and in flight during both rebalances, and every job must end `ok`;
  10 a second worker joins early, then w1 is frozen with SIGSTOP for 14 s, past its session timeout (6 s)
  and poll timeout (10 s) (`AIAAS_VISION_SESSION_TIMEOUT_MS`, `_HEARTBEAT_INTERVAL_MS`,
  `_MAX_POLL_INTERVAL_MS`, both workers), then resumed with SIGCONT: it wakes up as a zombie holding the
  batches it had taken; 11 tenant flood: tenant `bob` publishes to `<prefix>.vision.infer.bob` at 50 jobs/s,
  and after 8 s tenant `alice` (a process of her own: `bench/tenant_flood.py flood`) publishes N jobs to
  `<prefix>.vision.infer.alice` as fast as her producer takes them, far past the service's capacity; one
  results reader per tenant on its own results topic; bob's p50/p99 alone and during the flood are in the
  details (`bench/tenant_flood.py` measures them properly); 12 on a local 3-node KRaft cluster (`kafka.sh cluster`:
  topics replicated 3 times, min.insync.replicas=2, offsets and transaction state replicated 3 times), published at
  200 jobs/s so that both faults land mid-stream: kill -9 the node that leads a random partition of the infer topic,
  start it again after 3–8 s, wait until every replica is back in sync, then the same for the node that leads a
  random partition of the results topic (the details say what else each killed node led: partitions of the other
  topic, of `__consumer_offsets` and `__transaction_state`, i.e. group and transaction coordinators).
  "Random points" are seeded
  (`--seed`) and placed by progress: "at 37 %" = once 37 % of the good jobs had a result.
- **mode**: the service's `AIAAS_VISION_DELIVERY` (each worker also gets `AIAAS_VISION_INSTANCE_ID`, `w1` or `w2`).
- **jobs sent**: good vision jobs (held-out digits) the broker acknowledged, published at a fixed rate
  by a plain aiokafka producer (acks=all, idempotent); a send that failed is sent again.
- **jobs with a result**: good jobs with at least one final result in the results topic,
  read from beginning to end at the end of the run (read_committed).
- **lost**: jobs sent − jobs with a result. Required: 0.
- **duplicate results in topic**: results beyond one per message published with that key (good jobs
  and bad inputs alike), read_committed. Required in exactly-once mode: 0.
- **duplicates seen by client**: results the results reader handed to its application more than once,
  counted across its kills: the reader is `AiaasClient.results(group_id=..., seen=SeenFile(...))` in
  its own process, writing one line per result it is handed. Required: 0 in both modes.
- **service restarts caused by input**: worker exits the scenario did not cause, i.e. every exit that was not
  its own kill -9 or SIGTERM (so it bounds the exits caused by input from above); each such worker is started
  again at once, as a supervisor would. Required: 0.
- **DLQ records**: records in the DLQ topic (read_committed). Scenarios 6–8 require at least the bad inputs that
  must end as dead letters.
- **wall time**: first publish → every good job has a result and the reader has handed them all over.
- **bad inputs sent**: bad messages published (scenarios 6–8); not counted in jobs sent or lost.
- **reader missed**: good jobs with a result in the topic that never reached a line of the reader's file. Not a
  requirement; by design at most one per kill -9 of the reader (scenario 5), 0 otherwise: the client adds a job id
  to `seen` just before handing its result over (so it never hands it over twice), and a kill between that
  mark and the application's own write loses that one result for the application.
- **rewinds**: times the workers went back to a partition's first unfinished job after a batch's outcomes could
  not be published or its transaction failed, summed from their `service stopped` lines (a worker killed with
  kill -9 prints none; "–": none printed). Required 0 in scenarios 7 and 8: a bad input is a final outcome."""


def _cell(row: Row) -> list[str]:
    c = row.check
    rewinds = "–" if row.rewinds is None else f"{row.rewinds:,}"
    if c is None:
        return [row.scenario.name if row.scenario else "?", row.mode, *["–"] * 5, f"{row.input_restarts:,}",
                "–", "–", str(row.bad_sent), "–", rewinds]
    return [f"{row.scenario.number} {row.scenario.name}", row.mode, f"{c.sent:,}", f"{c.answered:,}", f"{c.lost:,}",
            f"{c.topic_duplicates:,}", f"{c.client_duplicates:,}", f"{row.input_restarts:,}", f"{c.dlq:,}",
            f"{row.wall_s:.1f} s", f"{row.bad_sent:,}", f"{c.reader_missed:,}", rewinds]


def table(rows: list[Row]) -> str:
    """The markdown table (one line per row; a failed run shows dashes and its error in the details)."""
    lines = [HEADER, RULE]
    for row in rows:
        cells = _cell(row)
        if row.check is None:
            cells[0] = f"{row.scenario.number} {row.scenario.name} (failed)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> list[str]:
    """Which rows break a requirement."""
    broken = []
    for row in rows:
        c, name = row.check, f"{row.scenario.number} {row.scenario.name} / {row.mode}"
        if c is None:
            broken.append(f"{name}: the run failed ({row.error})")
            continue
        if c.lost:
            broken.append(f"{name}: {c.lost} lost (e.g. {', '.join(c.lost_ids[:3])})")
        if c.client_duplicates:
            broken.append(f"{name}: {c.client_duplicates} duplicates seen by the client")
        if row.mode == "exactly-once" and c.topic_duplicates:
            examples = ", ".join(c.duplicate_ids[:3])
            broken.append(f"{name}: {c.topic_duplicates} duplicate results in the topic (e.g. {examples})")
        if row.dlq_expected and c.dlq < row.dlq_expected:
            broken.append(f"{name}: {c.dlq} DLQ records for {row.dlq_expected} bad inputs that must be dead letters")
        if c.bad_unexpected:
            broken.append(f"{name}: {len(c.bad_unexpected)} of {c.bad_checked} bad inputs ended otherwise than they "
                          f"must (e.g. {'; '.join(c.bad_unexpected[:3])})")
        if row.input_restarts:
            broken.append(f"{name}: {row.input_restarts} worker exit(s) the scenario did not cause")
        if row.scenario.no_rewinds and row.rewinds:
            broken.append(f"{name}: the workers rewound {row.rewinds} time(s)")
        if row.scenario.all_ok and c.not_ok:
            broken.append(f"{name}: good jobs not ok: " + ", ".join(f"{n} {s}" for s, n in c.not_ok.items()))
    return broken


def _latency(row: Row) -> list[str]:
    """Bob's p50/p99 by phase (the tenant flood)."""
    from bench.tenant_flood import percentile

    phases = {phase: (len(ms), percentile(ms, 50), percentile(ms, 99)) for phase, ms in row.latency.items()}
    if not phases:
        return []
    text = "; ".join(f"{phase}: {n} jobs, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
                     for phase, (n, p50, p99) in phases.items())
    solo, flood = phases.get("alone"), phases.get("during the flood")
    ratio = f" → p99 during the flood / alone = **{flood[2] / solo[2]:.2f}x**" if solo and flood and solo[2] else ""
    return [f"bob's latency (publish → result seen) {text}{ratio}"]


def _details(row: Row) -> list[str]:
    out = [f"**{row.scenario.number} {row.scenario.name} / {row.mode}**", ""]
    if row.ready_line:
        out.append(f"- w1: `{row.ready_line.split(': ', 1)[-1][:300]}`")
    if row.error:
        out.append(f"- run failed: `{row.error[:1000]}`")
    c = row.check
    if c is not None:
        extra = []
        if c.not_ok:
            extra.append("good jobs answered with " + ", ".join(f"{n} {s}" for s, n in c.not_ok.items()))
        if c.jobs_topic_duplicates:
            extra.append(f"{c.jobs_topic_duplicates} good jobs reached the jobs topic twice (publisher resends)")
        if c.undecodable_results:
            extra.append(f"{c.undecodable_results} undecodable records in the results topic")
        if row.bad_sent:
            extra.append(f"{c.bad_results} results for the {row.bad_sent} bad inputs"
                         + (f"; {c.bad_checked - len(c.bad_unexpected)} of the {c.bad_checked} checked ended as they "
                            "must" if c.bad_checked else ""))
        extra += [f"bad input ended otherwise: {u}" for u in c.bad_unexpected[:5]]
        extra += _latency(row)
        out += [f"- {e}" for e in extra]
    out += [f"- {note}" for note in row.notes]
    return out + [""]


_BROKERS = {"single": "single local KRaft node", "cluster": "local 3-node KRaft cluster for scenario 12"}


def machine(brokers: set[str] | None = None) -> str:
    """CPU, cores, memory, Python and the versions that matter here (`brokers`: which of `single`, `cluster` ran)."""
    cpu = cpu_name()
    try:
        mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal"))) / 2**20
        memory = f", {mem:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        memory = ""
    versions = []
    for dist in ("aiokafka", "onnxruntime", "pydantic"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", (REPO / "infra" / "kafka" / "pom.xml").read_text())
    kafka = found.group(1) if found else "?"
    ran = " and ".join(_BROKERS[b] for b in sorted(brokers or {"single"}, reverse=True))
    return (f"{cpu}, {os.cpu_count()} cores{memory} · Python {platform.python_version()} · "
            f"Apache Kafka {kafka} ({ran}) · " + " · ".join(versions))


def machine_slug() -> str:
    """A file-name-safe machine name: CPU model and core count."""
    cpu = machine().split(",", 1)[0]
    cpu = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b", "", cpu, flags=re.IGNORECASE)
    return f"{re.sub(r'[^a-z0-9]+', '-', cpu.lower()).strip('-')}-{os.cpu_count()}c"


def markdown(rows: list[Row], *, command: str, jobs: int, rate: float, seed: int, started: str, total_s: float,
             load: tuple[float, float, float] | None = None, brokers: set[str] | None = None) -> str:
    """The whole report: command, machine, N, the table, the column definitions, the details."""
    broken = verdict(rows)
    own_rates = "".join(sorted({f" (scenario {row.scenario.number}: {row.scenario.rate:,.0f}/s)" for row in rows
                                if row.scenario.rate and row.scenario.rate != rate}))
    busy = "" if load is None else (" Load average (1/5/15 min) when it ended: "
                                    f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} "
                                    "(other work on the machine slows the runs down: wall times vary with it).")
    return "\n".join([
        f"# aiaas fault suite — {started}",
        "",
        f"Command: `{command}` ({total_s / 60:.1f} min in all).",
        f"Machine: {machine(brokers)}.{busy}",
        f"N = {jobs:,} good jobs per scenario run, published at {rate:,.0f}/s{own_rates}; seed {seed}. Every run "
        "has its own "
        "topics, consumer groups and processes; the vision service runs as `python -m aiaas.vision` with its "
        "defaults (trace export off: `OTEL_TRACES_EXPORTER=none`).",
        "",
        table(rows),
        "",
        "Requirements (lost = 0 everywhere; exactly-once: duplicate results in topic = 0; duplicates seen by "
        "client = 0 and service restarts caused by input = 0 in both modes; every checked bad input ends as it must; "
        "no rewinds for bad inputs; scenario 9: every job ok): " + ("all met." if not broken else "**not met**:"),
        *[f"- {b}" for b in broken],
        "",
        "## Columns",
        "",
        LEGEND,
        "",
        "## What happened in each run",
        "",
        *[line for row in rows for line in _details(row)],
    ])
