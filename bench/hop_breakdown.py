"""Where an open-loop level's time went, hop by hop: the traced service's spans (its local span store) joined with
what the load generator saw of each job (when it published, when the broker acknowledged it, when the result came
back), so each job has the hops `aiaas trace --stats` gives for a traced publisher and reader
(`services/aiaas/tracing/hops.py`).

The raw load generator sends each job with a `traceparent` of its own but records no spans (they would cost its
share of the two cores): its publish and its receipt become spans here, under the same ids the service continued.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from aiaas.tracing.hops import JobTimes, hop_stats, job_times, result_send, slowest_jobs
from aiaas.tracing.span_store import StoredSpan, load_spans

from .load import JobTimeline, OpenLoop

__all__ = ["add_hops", "add_hops_once_stored", "hop_times"]

_STORED_EVERY_S = 0.5
"""How often a service appends its spans to the local span store."""


def add_hops(points: Sequence[OpenLoop], span_dir: Path, model: str) -> None:
    """Fill each point's `hops` and `slowest` from the spans in `span_dir`, read once (nothing for a point whose
    jobs were not traced)."""
    spans = load_spans(span_dir)
    for point in points:
        times = hop_times(spans, point.timeline, model)
        point.hops, point.slowest = hop_stats(times), slowest_jobs(times)


async def add_hops_once_stored(points: Sequence[OpenLoop], span_dir: Path, model: str) -> None:
    """`add_hops`, once the services have stored the spans of the jobs just answered."""
    await asyncio.sleep(3 * _STORED_EVERY_S)
    add_hops(points, span_dir, model)


def hop_times(spans: Sequence[StoredSpan], timeline: Sequence[JobTimeline], model: str) -> list[JobTimes]:
    """The hops of the jobs in `timeline`, from the service's `spans` and the load generator's times."""
    wanted = {job.trace_id for job in timeline}
    traces: dict[str, list[StoredSpan]] = defaultdict(list)
    calls = []
    for span in spans:
        if span.trace_id in wanted:
            traces[span.trace_id].append(span)
        elif span.name == f"infer {model}":
            calls.append(span)
    ours: list[StoredSpan] = []
    for job in timeline:
        trace = traces.get(job.trace_id)
        if not trace:
            continue
        ours.append(StoredSpan(job.trace_id, job.span_id, None, f"send {model} jobs", "PRODUCER", "bench-load",
                               _ns(job.sent_at), _ns(job.acked_at), "UNSET"))
        process = {s.span_id for s in trace if s.kind == "CONSUMER"}
        result = result_send(s for s in trace if s.parent_id in process)
        if result is not None:
            ours.append(StoredSpan(job.trace_id, os.urandom(8).hex(), result.span_id, f"process {model} results",
                                   "CONSUMER", "bench-load", _ns(job.received_at), _ns(job.received_at), "UNSET"))
    return job_times([*(s for trace in traces.values() for s in trace), *calls, *ours], model)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
