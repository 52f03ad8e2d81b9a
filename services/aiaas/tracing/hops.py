"""Where jobs' time went, hop by hop, from their traces (`aiaas trace --stats <model>`).

A job's trace holds the publisher's `send <infer topic>` (S), the service's `process <infer topic>` (P, from when
the pipeline took the record from the broker until the batch's outcomes were acknowledged), the batch's
`infer <model>` span linked from P (I, a trace of its own), the result's `send <results topic>` under P (R) and,
where the reader uses the aiaas client, its `process <results topic>` under R (C). The hops between them:

    publish         S starts → S ends: the publisher's send until the broker acknowledged it
    in partition    S ends → P starts: in the partition until the service took it
    in pipeline     P starts → I starts: in the service's window until its batch's model call began
    model call      I: its batch's model call
    result publish  I ends → R ends: the outcome encoded and sent, until the broker acknowledged it
    to reader       R ends → C starts: until the reader received it
    end to end      S starts → C starts (→ R ends where no reader's receipt is in the trace)

A hop is left out for a job whose trace lacks its spans (a publisher without tracing, a reader without the aiaas
client). A job answered after retries is measured from its first publish to its last attempt: its `in partition`
holds the earlier attempts and their backoff. A send ends when its sender handled the broker's acknowledgement
(the service's result sends: when the batch's last one was acknowledged); a busy sender may handle it after the
consumer took the record, so `in partition` and `to reader` can read a little below 0 (not their sums with the hop
before them). Times on two hosts are as far apart as their clocks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from aiaas.tracing.conventions import JOB_ID
from aiaas.tracing.span_store import StoredSpan

__all__ = ["HOPS", "JobTimes", "HopStats", "SlowestJobs", "job_times", "hop_stats", "slowest_jobs", "render_stats",
           "result_send"]

HOPS = ("publish", "in partition", "in pipeline", "model call", "result publish", "to reader", "end to end")
_DESTINATION = "messaging.destination.name"
_NOT_RESULTS = (".retry", ".dlq")


@dataclass(frozen=True)
class JobTimes:
    """One job's hops, in seconds (only those its trace has the spans of)."""

    job_id: str
    taken_ns: int
    """When the service took it from the broker (P's start)."""
    hops: dict[str, float]


def job_times(spans: Iterable[StoredSpan], model: str, *, since_ns: int = 0) -> list[JobTimes]:
    """The hops of every job of `model` whose trace is in `spans`, taken by the service at `since_ns` or later."""
    service = f"aiaas-{model}"
    traces: dict[str, list[StoredSpan]] = defaultdict(list)
    model_calls: dict[str, StoredSpan] = {}  # by the span id of each process span that links to the call
    for span in spans:
        traces[span.trace_id].append(span)
        if span.name == f"infer {model}":
            for _, linked_id in span.links:
                model_calls[linked_id] = span
    times = []
    for trace in traces.values():
        job = _job_of(trace, service, model_calls)
        if job is not None and job.taken_ns >= since_ns:
            times.append(job)
    return times


def _job_of(trace: list[StoredSpan], service: str, model_calls: dict[str, StoredSpan]) -> JobTimes | None:
    answering = [s for s in trace if s.kind == "CONSUMER" and s.service == service and s.name.startswith("process ")
                 and s.span_id in model_calls]
    if not answering:
        return None
    process = max(answering, key=lambda s: s.start_ns)  # the attempt that answered
    call = model_calls[process.span_id]
    children: dict[str | None, list[StoredSpan]] = defaultdict(list)
    for span in trace:
        children[span.parent_id].append(span)
    result = result_send(children[process.span_id])
    publish = _first_publish(process, {s.span_id: s for s in trace})
    receipt = next((s for s in children[result.span_id] if s.kind == "CONSUMER"), None) if result else None
    hops: dict[str, float] = {}
    if publish is not None:
        hops["publish"] = publish.end_ns - publish.start_ns
        hops["in partition"] = process.start_ns - publish.end_ns
    hops["in pipeline"] = call.start_ns - process.start_ns
    hops["model call"] = call.end_ns - call.start_ns
    if result is not None:
        hops["result publish"] = result.end_ns - call.end_ns
        if receipt is not None:
            hops["to reader"] = receipt.start_ns - result.end_ns
        if publish is not None:
            hops["end to end"] = (receipt.start_ns if receipt else result.end_ns) - publish.start_ns
    job_id = str(process.attributes.get(JOB_ID, "?"))
    return JobTimes(job_id, process.start_ns, {hop: ns / 1e9 for hop, ns in hops.items()})


@dataclass(frozen=True)
class HopStats:
    """One hop's milliseconds over a set of jobs."""

    jobs: int
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True)
class SlowestJobs:
    """Where the slowest 1 % of jobs (by `by`: end to end where measured) spent their time."""

    by: str
    jobs: int
    mean_ms: dict[str, float]
    """Each hop's mean over them (the hops that add up to `by`)."""

    @property
    def most(self) -> str:
        """The hop that held most of their time."""
        return max(self.mean_ms, key=lambda hop: self.mean_ms[hop])


def hop_stats(times: Sequence[JobTimes]) -> dict[str, HopStats]:
    """Each hop's percentiles over the jobs that have it, in `HOPS` order."""
    stats = {}
    for hop in HOPS:
        values = np.array([t.hops[hop] for t in times if hop in t.hops]) * 1000
        if len(values):
            p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
            stats[hop] = HopStats(len(values), p50, p90, p99, float(values.max()))
    return stats


def slowest_jobs(times: Sequence[JobTimes]) -> SlowestJobs | None:
    """The jobs at or above the p99 of end to end (of `in pipeline` where no job has end to end) and their hops'
    means; None without jobs."""
    by = "end to end" if any("end to end" in t.hops for t in times) else "in pipeline"
    measured = [t for t in times if by in t.hops]
    if not measured:
        return None
    p99 = float(np.percentile([t.hops[by] for t in measured], 99))
    slowest = [t for t in measured if t.hops[by] >= p99]
    parts = HOPS[:-1] if by == "end to end" else ("in pipeline",)
    means = {hop: float(np.mean([t.hops.get(hop, 0.0) for t in slowest])) * 1000
             for hop in parts if any(hop in t.hops for t in slowest)}
    return SlowestJobs(by, len(slowest), means)


def result_send(spans: Iterable[StoredSpan]) -> StoredSpan | None:
    """The send of a job's result among the spans under its `process` span (not a retry or a dead letter)."""
    return next((s for s in spans if s.kind == "PRODUCER"
                 and not str(s.attributes.get(_DESTINATION, s.name)).endswith(_NOT_RESULTS)), None)


def _first_publish(process: StoredSpan, by_id: dict[str, StoredSpan]) -> StoredSpan | None:
    """The topmost send above `process` (through any retry sends and the publisher's own spans)."""
    publish, span = None, by_id.get(process.parent_id or "")
    while span is not None:
        if span.kind == "PRODUCER":
            publish = span
        span = by_id.get(span.parent_id or "") if span.parent_id != span.span_id else None
    return publish


def render_stats(times: Sequence[JobTimes], model: str) -> str:
    """A table of each hop's percentiles over `times`, and where the slowest 1 % of jobs spent their time."""
    if not times:
        return f"no traced jobs of {model}"
    lines = [f"{model}: {len(times)} jobs, milliseconds",
             f"{'hop':<15} {'jobs':>7} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}"]
    for hop, st in hop_stats(times).items():
        lines.append(f"{hop:<15} {st.jobs:>7} {st.p50:>9.2f} {st.p90:>9.2f} {st.p99:>9.2f} {st.max:>9.2f}")
    slowest = slowest_jobs(times)
    if slowest is not None:
        whole = sum(slowest.mean_ms.values()) or 1.0
        lines += ["", f"the slowest 1 % ({slowest.jobs} jobs, {slowest.by} at or above its p99): mean ms per hop",
                  "  " + "  ".join(f"{hop} {ms:.2f} ({ms / whole:.0%})" for hop, ms in slowest.mean_ms.items()),
                  f"  most of it: {slowest.most}"]
    return "\n".join(lines)
