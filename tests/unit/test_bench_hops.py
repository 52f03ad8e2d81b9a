"""The benchmark's hop breakdown: the service's spans joined with what the load generator saw of each job
(bench/hop_breakdown.py), and the report's table of it (bench/report.py)."""

from __future__ import annotations

import pytest

from aiaas.tracing.hops import hop_stats, slowest_jobs
from aiaas.tracing.span_store import StoredSpan
from bench.hop_breakdown import hop_times
from bench.load import JobTimeline, OpenLoop
from bench.report import _hop_table

MS = 1_000_000


def service_spans(trace: str, parent: str, at_ms: float) -> list[StoredSpan]:
    """What the traced service stores for one job: taken at `at_ms`, a 2 ms model call 4 ms later, the result
    acknowledged 5 ms after it."""
    def span(span_id, name, kind, start, end, parent_id=None, **attributes):
        return StoredSpan(trace, span_id, parent_id, name, kind, "aiaas-vision", int(start * MS), int(end * MS),
                          "UNSET", attributes)
    return [span(f"{trace}-p", "process b.vision.infer", "CONSUMER", at_ms, at_ms + 11, parent),
            span(f"{trace}-r", "send b.vision.results", "PRODUCER", at_ms + 8, at_ms + 11, f"{trace}-p",
                 **{"messaging.destination.name": "b.vision.results"}),
            StoredSpan("batch", f"{trace}-i", None, "infer vision", "INTERNAL", "aiaas-vision",
                       int((at_ms + 4) * MS), int((at_ms + 6) * MS), "UNSET", {}, [[trace, f"{trace}-p"]])]


def test_the_load_generators_times_become_the_publish_and_the_receipt_of_each_job():
    spans = service_spans("t1", "s1", 1003.0) + service_spans("other", "s9", 2000.0)  # another run's job too
    timeline = [JobTimeline("t1", "s1", sent_at=1.000, acked_at=1.002, received_at=1.0155)]
    (job,) = hop_times(spans, timeline, "vision")
    assert job.hops == pytest.approx({"publish": 0.002, "in partition": 0.001, "in pipeline": 0.004,
                                      "model call": 0.002, "result publish": 0.005, "to reader": 0.0015,
                                      "end to end": 0.0155})
    assert hop_times(spans, [JobTimeline("gone", "s0", 1.0, 1.0, 1.0)], "vision") == []  # its spans were dropped


def test_the_report_gives_each_levels_hops_and_the_hop_of_its_slowest_jobs():
    spans, timeline = [], []
    for n in range(100):
        at = n * 0.05
        late = 0.2 if n >= 98 else 0.0  # two jobs a reader got 200 ms late: the slowest 1 %
        spans += service_spans(f"t{n}", f"s{n}", at * 1000 + 3)
        timeline.append(JobTimeline(f"t{n}", f"s{n}", at, at + 0.002, at + 0.0155 + late))
    times = hop_times(spans, timeline, "vision")
    point = OpenLoop(0.5, 100.0, 100.0, 100, 12.5, 13.0, 200.0, 0.0, hops=hop_stats(times),
                     slowest=slowest_jobs(times))
    header, _, columns, _, row, _ = _hop_table([point])[:6]
    assert columns.startswith("| offered | publish | in partition | in pipeline | model call | result publish | "
                              "to reader | end to end |")
    assert row.startswith("| 50% | 2.0 / 2.0 | 1.0 / 1.0 | 4.0 / 4.0 | 2.0 / 2.0 | 5.0 / 5.0 | 1.5 / ")
    assert row.endswith("| to reader (94%) |")
    assert _hop_table([]) == []
