"""Where a process stood still: Python's garbage collections, and how late its event loop woke up.

When a job's p99 is high and `aiaas trace --stats` puts the time in `in partition` or `result publish`, the first
question is whether the service itself stood still then. Both histograms answer it from the process's own side:

* `aiaas_gc_pause_seconds{generation}` (every aiaas process): each collection's duration, timed by a `gc.callbacks`
  hook (prometheus-client's GC collector counts collections, not how long they held every thread; the time includes
  any callbacks registered after this one);
* `aiaas_gc_cpu_seconds{generation}`: the CPU time the collecting thread had during each of them. A collection whose
  CPU time is far below its duration spent the rest waiting for a core (a machine busy with other processes, a
  container's CPU limit), not walking objects: the fix is then the machine's, not the heap's;
* `aiaas_event_loop_lag_seconds` (model services): how much later than asked a short sleep on the event loop ended,
  sampled every `LAG_EVERY_S`: a long synchronous step (a model call on the loop, a large batch's per-job work) shows
  here, and with it every Kafka request and acknowledgement that waited behind it.

Both are process-wide (one hook, one loop per service process); where several services share an interpreter (tests),
each registry exports what all of them recorded. The counts are plain integers, not prometheus-client metrics: a
collection can start in any thread at any allocation, including one made while a metric's lock is held (a scrape),
and a callback that took that lock would wait for ever.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["GcPauses", "LoopLag", "watch_gc", "watch_loop_lag", "PAUSE_BUCKETS", "LAG_EVERY_S"]

PAUSE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Upper bounds in seconds (+Inf after them): from a young collection's fraction of a millisecond to a loop blocked for
seconds."""

LAG_EVERY_S = 0.05
"""How often the event loop's lag is sampled (each sample: one sleep of this length)."""


class _Durations:
    """Counts per bucket and a sum, lock-free (see the module's note); a lost increment under a race costs one
    observation."""

    def __init__(self) -> None:
        self.counts = [0] * (len(PAUSE_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(PAUSE_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, running = [], 0
        for bound, count in zip([*map(floatToGoString, PAUSE_BUCKETS), "+Inf"], list(self.counts), strict=True):
            running += count
            cumulative.append((bound, float(running)))
        return cumulative


_gc_pauses = {generation: _Durations() for generation in range(3)}  # by generation, as gc.callbacks reports it
_gc_cpu = {generation: _Durations() for generation in range(3)}
_loop_lag = _Durations()


class _GcClock:
    """The running collection's start, on the wall clock and on its thread's CPU clock (one collection at a time
    per process: the collecting thread holds the GIL throughout)."""

    started = 0.0
    cpu_started = 0.0


_wall_clock, _cpu_clock = time.perf_counter, time.thread_time


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _GcClock.started, _GcClock.cpu_started = _wall_clock(), _cpu_clock()
    else:
        generation = info.get("generation", -1)
        if generation in _gc_pauses:
            _gc_cpu[generation].observe(_cpu_clock() - _GcClock.cpu_started)
            _gc_pauses[generation].observe(_wall_clock() - _GcClock.started)


def watch_gc() -> None:
    """Time every garbage collection of this process from now on (once per process, whoever calls it)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


async def watch_loop_lag(every_s: float = LAG_EVERY_S) -> None:
    """Sample how late the running event loop wakes up, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + every_s
        await asyncio.sleep(every_s)
        _loop_lag.observe(max(0.0, loop.time() - asked))


def _family(name: str, documentation: str, series: Sequence[tuple[list[str], _Durations]],
            labels: Sequence[str] = ()) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, durations in series:
        family.add_metric(values, durations.buckets(), durations.total)
    return family


class GcPauses(Collector):
    """Exports `aiaas_gc_pause_seconds` and `aiaas_gc_cpu_seconds` (install the hook with `watch_gc`)."""

    def collect(self) -> Iterator[Metric]:
        yield _family("aiaas_gc_pause_seconds", "Each garbage collection of this process, by generation: how long "
                      "it held every thread.", [([str(g)], pauses) for g, pauses in _gc_pauses.items()],
                      ["generation"])
        yield _family("aiaas_gc_cpu_seconds", "Each garbage collection's CPU time on its thread, by generation: "
                      "where far below aiaas_gc_pause_seconds, the collection waited for a core.",
                      [([str(g)], cpu) for g, cpu in _gc_cpu.items()], ["generation"])


class LoopLag(Collector):
    """Exports `aiaas_event_loop_lag_seconds` (sampled by `watch_loop_lag`)."""

    def collect(self) -> Iterator[Metric]:
        yield _family("aiaas_event_loop_lag_seconds", f"How much later than asked a {LAG_EVERY_S:g} s sleep on the "
                      "event loop ended: how long the loop was held by synchronous work.", [([], _loop_lag)])
