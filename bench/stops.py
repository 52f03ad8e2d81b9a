"""The service's own stops over a stretch of a benchmark: its garbage collections and its event loop's lag, from two
scrapes of its /metrics (`aiaas_gc_pause_seconds`, `aiaas_gc_cpu_seconds`, `aiaas_event_loop_lag_seconds`).

Used by bench/run.py (per load level), bench/tenant_flood.py and bench/priority_flood.py (per phase).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiaas.metrics.fleet import Scrape, scrape
from aiaas.metrics.pauses import PAUSE_BUCKETS
from aiaas.metrics.targets import list_targets

__all__ = ["Stops", "stops_title", "stops_table", "scrape_service"]


def scrape_service(home: Path, pid: int | None) -> Scrape | None:
    """A scrape of the /metrics of the aiaas process `pid` under `home`, found by its target file; None without one."""
    targets = [t for t in list_targets(home) if t.pid == pid]
    return scrape(targets[0]) if targets else None


@dataclass
class Stops:
    """The service's own stops over a stretch of time, from its /metrics: its garbage collections
    (`aiaas_gc_pause_seconds`, how many of them full, and their CPU time: `aiaas_gc_cpu_seconds`) and its event loop's
    lag (`aiaas_event_loop_lag_seconds`: how late a 50 ms sleep ended, sampled all the time). Longest: the upper bound
    of the highest histogram bucket that gained any."""

    collections: int
    long_collections: int
    longest_collection_ms: float
    lag_samples: int
    long_lags: int
    longest_lag_ms: float
    longest_collection_cpu_ms: float = 0.0
    """The same bound for the collections' CPU time (`aiaas_gc_cpu_seconds`): far below the longest collection, that
    collection waited for a core."""
    full_collections: int = 0
    """Of the collections, the full ones (generation 2: they walk every object not frozen)."""

    LONG_S = 0.01
    """A stop longer than this counts as long (the histograms' buckets end at 10 ms)."""

    @classmethod
    def between(cls, before: Scrape | None, after: Scrape | None) -> Stops | None:
        """From two scrapes of the service (None when either failed)."""
        if before is None or after is None or before.error or after.error:
            return None
        gc, lag, cpu = (_gained(before, after, name) for name in (
            "aiaas_gc_pause_seconds", "aiaas_event_loop_lag_seconds", "aiaas_gc_cpu_seconds"))
        full = _gained(before, after, "aiaas_gc_pause_seconds", generation="2")
        return cls(*_summary(gc, cls.LONG_S), *_summary(lag, cls.LONG_S), _summary(cpu, cls.LONG_S)[2],
                   _summary(full, cls.LONG_S)[0])

    @classmethod
    def combined(cls, stretches: Iterable[Stops | None]) -> Stops | None:
        """Several stretches as one (counts added, the longest the longest); None when any is unknown."""
        known = list(stretches)
        if not known or any(s is None for s in known):
            return None
        every = [s for s in known if s is not None]
        return cls(sum(s.collections for s in every), sum(s.long_collections for s in every),
                   max(s.longest_collection_ms for s in every), sum(s.lag_samples for s in every),
                   sum(s.long_lags for s in every), max(s.longest_lag_ms for s in every),
                   max(s.longest_collection_cpu_ms for s in every), sum(s.full_collections for s in every))


def _gained(before: Scrape, after: Scrape, name: str, **match: str) -> dict[float, float]:
    """A histogram's cumulative counts by upper bound (of its series with the labels in `match`), gained between two
    scrapes."""
    was = before.buckets(name, **match)
    return {bound: count - was.get(bound, 0.0) for bound, count in sorted(after.buckets(name, **match).items())}


def _summary(cumulative: dict[float, float], long_s: float) -> tuple[int, int, float]:
    """(observations, those over `long_s`, the upper bound in ms of the highest bucket with any; 0 without any)."""
    total = max(cumulative.values(), default=0.0)
    short = max((count for bound, count in cumulative.items() if bound <= long_s), default=0.0)
    longest = min((bound for bound, count in cumulative.items() if count >= total), default=0.0) if total else 0.0
    return int(total), int(total - short), longest * 1000


def stops_table(rows: Sequence[tuple[str, str, Stops | None]], labels: tuple[str, str] = ("run", "phase")) -> str:
    """One line per (first label, second label, stops): a run and its phase, by default."""
    lines = [f"| {labels[0]} | {labels[1]} | collections | full | of which > 10 ms | longest ≤ ms "
             "| longest CPU ≤ ms | loop-lag samples | of which > 10 ms late | longest ≤ ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for first, second, stops in rows:
        if stops is None:
            lines.append(f"| {first} | {second} | – | – | – | – | – | – | – | – |")
            continue
        gc = (f"| {_longest(stops.longest_collection_ms)} | {_longest(stops.longest_collection_cpu_ms)} "
              if stops.collections else "| – | – ")
        lines.append(f"| {first} | {second} | {stops.collections} | {stops.full_collections} "
                     f"| {stops.long_collections} {gc}"
                     f"| {stops.lag_samples} | {stops.long_lags} | {_longest(stops.longest_lag_ms)} |")
    return "\n".join(lines)


def _longest(ms: float) -> str:
    """A bucket's upper bound in ms; past the last finite bound, "> <that bound>"."""
    return f"> {PAUSE_BUCKETS[-1] * 1000:g}" if ms == float("inf") else f"{ms:g}"


def stops_title(when: str) -> str:
    """The line above a `stops_table`: what its columns are; `when` says over which stretches ("in each phase")."""
    return (f"The service's own stops {when} (its /metrics: garbage collections, how many were full ones, the longest, "
            "the longest CPU time one had on its thread, and how late its event loop woke from 50 ms sleeps; \"≤ ms\": "
            "the upper bound of the highest histogram bucket reached; – where there was none):")
