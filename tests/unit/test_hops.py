"""A job's hops from its spans (`aiaas trace --stats`): which span bounds which hop, what a trace without a publisher
or a reader gives, which attempt of a retried job counts, and the table."""

from __future__ import annotations

import pytest

from aiaas.tracing.hops import HOPS, job_times, render_stats
from aiaas.tracing.span_store import StoredSpan

MS = 1_000_000


def span(trace: str, span_id: str, name: str, kind: str, service: str, start_ms: float, end_ms: float,
         parent: str | None = None, links: tuple[str, ...] = (), **attributes) -> StoredSpan:
    return StoredSpan(trace, span_id, parent, name, kind, service, int(start_ms * MS), int(end_ms * MS), "UNSET",
                      attributes, [["batch", link] for link in links])


def job(trace: str, at: float, *, publisher: bool = True, reader: bool = True, retried: bool = False) -> list:
    """A job's spans: published at `at` ms, taken 3 ms later, batched 4 ms, a 2 ms model call, result acknowledged
    5 ms after it, read 1 ms after that."""
    spans = [span(trace, f"{trace}-s", "send p.vision.infer", "PRODUCER", "aiaas-cli", at, at + 1)] if publisher \
        else []
    parent = f"{trace}-s" if publisher else None
    if retried:  # a first attempt that failed into the retry topic; its retry record carried the trace on
        spans += [span(trace, f"{trace}-p0", "process p.vision.infer", "CONSUMER", "aiaas-vision", at + 2, at + 3,
                       parent, **{"aiaas.job.id": trace}),
                  span(trace, f"{trace}-r0", "send p.vision.retry", "PRODUCER", "aiaas-vision", at + 3, at + 3.5,
                       f"{trace}-p0", **{"messaging.destination.name": "p.vision.retry"})]
        parent = f"{trace}-r0"
    spans += [
        span(trace, f"{trace}-p", "process p.vision.infer", "CONSUMER", "aiaas-vision", at + 4, at + 15, parent,
             **{"aiaas.job.id": trace}),
        span(trace, f"{trace}-r", "send p.vision.results", "PRODUCER", "aiaas-vision", at + 9, at + 15, f"{trace}-p",
             **{"messaging.destination.name": "p.vision.results"}),
    ]
    if reader:
        spans.append(span(trace, f"{trace}-c", "process p.vision.results", "CONSUMER", "aiaas-cli", at + 16, at + 16,
                          f"{trace}-r"))
    return spans


def model_call(at: float, *jobs: str) -> StoredSpan:
    return span("batch", f"call-{at}", "infer vision", "INTERNAL", "aiaas-vision", at + 8, at + 10,
                links=tuple(f"{j}-p" for j in jobs))


def test_each_hop_is_bounded_by_the_spans_it_names_and_they_add_up():
    (times,) = job_times([*job("a", 100), model_call(100, "a")], "vision")
    assert times.job_id == "a" and times.taken_ns == 104 * MS
    assert times.hops == pytest.approx({"publish": 0.001, "in partition": 0.003, "in pipeline": 0.004,
                                        "model call": 0.002, "result publish": 0.005, "to reader": 0.001,
                                        "end to end": 0.016})


def test_without_a_traced_publisher_or_reader_their_hops_are_left_out_and_the_end_is_the_acknowledgement():
    (no_reader,) = job_times([*job("a", 0, reader=False), model_call(0, "a")], "vision")
    assert "to reader" not in no_reader.hops and no_reader.hops["end to end"] == pytest.approx(0.015)
    (no_publisher,) = job_times([*job("b", 0, publisher=False), model_call(0, "b")], "vision")
    assert set(no_publisher.hops) == {"in pipeline", "model call", "result publish", "to reader"}


def test_a_retried_job_counts_the_attempt_that_answered_and_other_models_and_older_jobs_are_left_out():
    spans = [*job("a", 0, retried=True), model_call(0, "a"), *job("b", 50), model_call(50, "b")]
    retried = next(t for t in job_times(spans, "vision") if t.job_id == "a")
    assert retried.taken_ns == 4 * MS and retried.hops["in partition"] == pytest.approx(0.003)  # from the publish
    assert [t.job_id for t in job_times(spans, "vision", since_ns=20 * MS)] == ["b"]
    assert job_times(spans, "text") == []
    assert job_times(job("c", 0), "vision") == []  # no model call yet (or it failed before one): not a hop set


def test_the_table_gives_each_hops_percentiles_and_names_the_slow_jobs_hop():
    spans = [s for n in range(100) for s in (*job(f"j{n}", n * 20), model_call(n * 20, f"j{n}"))]
    for n, at in enumerate((5000, 6000)):  # two jobs 100 ms longer in the partition: the slowest 1 % (of 102)
        slow = [s for s in job(f"slow{n}", at) if s.name != "send p.vision.infer"]
        slow.insert(0, span(f"slow{n}", f"slow{n}-s", "send p.vision.infer", "PRODUCER", "aiaas-cli", at - 100,
                            at - 99))
        spans += [*slow, model_call(at, f"slow{n}")]
    table = render_stats(job_times(spans, "vision"), "vision").splitlines()
    assert table[0] == "vision: 102 jobs, milliseconds"
    assert table[-3].startswith("the slowest 1 % (2 jobs, end to end at or above its p99)")
    assert [line.split()[0] for line in table[2 : 2 + len(HOPS)]] == ["publish", "in", "in", "model", "result", "to",
                                                                      "end"]
    assert table[-1] == "  most of it: in partition"
    assert render_stats([], "vision") == "no traced jobs of vision"
