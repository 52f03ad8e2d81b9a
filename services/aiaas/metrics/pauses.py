"""Where a process stood still: Python's garbage collections, and how late its event loop woke up.

When a job's p99 is high and `aiaas trace --stats` puts the time in `in partition` or `result publish`, the first
question is whether the service itself stood still then. Both histograms answer it from the process's own side:

* `aiaas_gc_pause_seconds{generation}`: each collection's duration, timed by a `gc.callbacks` hook (prometheus-client's
  GC collector counts collections, not how long they held every thread);
* `aiaas_event_loop_lag_seconds`: how much later than asked a short sleep on the event loop ended, sampled
  `LAG_EVERY_S`: a long synchronous step (a model call on the loop, a large batch's per-job work) shows here, and
  with it every Kafka request and acknowledgement that waited behind it.

One hook per process, whatever number of registries export it (tests run several services in one interpreter).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["PauseCollector", "watch_gc", "watch_loop_lag", "PAUSE_BUCKETS", "LAG_EVERY_S"]

PAUSE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, float("inf"))
"""Seconds: from a young collection's fraction of a millisecond to a loop blocked for seconds."""

LAG_EVERY_S = 0.05
"""How often the event loop's lag is sampled (each sample: one sleep of this length)."""

_GC_PAUSES = Histogram("aiaas_gc_pause_seconds", "Each garbage collection of this process, by generation: how long "
                       "it held every thread.", ["generation"], buckets=PAUSE_BUCKETS, registry=None)
_LOOP_LAG = Histogram("aiaas_event_loop_lag_seconds", f"How much later than asked a {LAG_EVERY_S:g} s sleep on the "
                      "event loop ended: how long the loop was held by synchronous work.",
                      buckets=PAUSE_BUCKETS, registry=None)
for _generation in ("0", "1", "2"):
    _GC_PAUSES.labels(_generation)  # exported from 0

_hooked = threading.Lock()
_gc_started: list[float] = []  # the running collection's start (collections do not nest)


class PauseCollector(Collector):
    """Exports this process's pause histograms into a registry."""

    def collect(self) -> Iterator[Metric]:
        yield from _GC_PAUSES.collect()
        yield from _LOOP_LAG.collect()


def watch_gc() -> None:
    """Time every garbage collection of this process from now on (once per process, whoever calls it)."""
    with _hooked:
        if _on_gc not in gc.callbacks:
            gc.callbacks.append(_on_gc)


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        _GC_PAUSES.labels(str(info.get("generation", "?"))).observe(time.perf_counter() - _gc_started.pop())


async def watch_loop_lag(every_s: float = LAG_EVERY_S) -> None:
    """Sample how late the running event loop wakes up, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + every_s
        await asyncio.sleep(every_s)
        _LOOP_LAG.observe(max(0.0, loop.time() - asked))
