"""What `aiaas top` shows: every announced process scraped, and per model type the rates and latency of the last
few seconds, computed from the differences between scrapes (as Prometheus' `rate` and `histogram_quantile` would).

`scrape` reads one endpoint; `FleetView` keeps the last scrapes of each process and turns them into one row per
model type (services) and one per trainer.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from aiaas.metrics.targets import Target

__all__ = ["Sample", "Scrape", "scrape", "ServiceRow", "TrainerRow", "FleetView", "quantile"]

Sample = tuple[str, tuple[tuple[str, str], ...], float]
"""(name, sorted labels, value) of one exported series."""


@dataclass
class Scrape:
    """One read of one process: its series, whether it is ready, and when."""

    target: Target
    at: float
    series: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    ready: bool = False
    error: str | None = None

    def total(self, name: str, **match: str) -> float:
        """The sum of a metric's series whose labels include `match`."""
        return sum(value for (n, labels), value in self.series.items()
                   if n == name and all((k, v) in labels for k, v in match.items()))

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """A histogram's cumulative counts by upper bound, summed over its label sets (those with the labels in
        `match`, when given)."""
        found: dict[float, float] = defaultdict(float)
        for (n, labels), value in self.series.items():
            if n == name + "_bucket" and all((k, v) in labels for k, v in match.items()):
                found[float(dict(labels)["le"])] += value
        return dict(found)

    def label_values(self, name: str, label: str) -> set[str]:
        """The values one label takes in a metric's series."""
        return {dict(labels)[label] for (n, labels) in self.series if n == name and label in dict(labels)}


def scrape(target: Target, timeout_s: float = 0.8) -> Scrape:
    """Read a process's /metrics and /readyz (never raises: an unreachable process is a Scrape with `error`)."""
    result = Scrape(target, time.monotonic())
    try:
        with urllib.request.urlopen(target.url + "/metrics", timeout=timeout_s) as answer:  # noqa: S310 - ours
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                result.series[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    except (OSError, ValueError) as exc:
        result.error = str(exc)
        return result
    try:
        with urllib.request.urlopen(target.url + "/readyz", timeout=timeout_s) as answer:  # noqa: S310
            result.ready = answer.status == 200
    except OSError:
        result.ready = False  # a 503 raises HTTPError, an OSError
    return result


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The q-quantile of the observations a histogram gained between two scrapes (cumulative buckets by upper
    bound), interpolated linearly inside its bucket as Prometheus' `histogram_quantile` does; None without any."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the open top bucket: its lower bound is all that is known
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


@dataclass
class ServiceRow:
    """One model type's services, over the last window."""

    model: str
    replicas: int
    ready: int
    jobs_per_s: float
    errors_per_s: float
    p50_s: float | None
    p99_s: float | None
    lag: float
    in_flight: float
    batch_size: float | None
    versions: str
    dead_letters: float


@dataclass
class TrainerRow:
    """One model type's trainers."""

    model: str
    replicas: int
    running: float
    epochs: float
    succeeded: float
    failed: float
    metric: str


class FleetView:
    """The last scrapes of every process (a window of `window_s`), and the rows they make."""

    def __init__(self, window_s: float = 10.0) -> None:
        self._window_s = window_s
        self._history: dict[tuple[str, int], deque[Scrape]] = {}

    def add(self, scrapes: Iterable[Scrape]) -> None:
        """Keep a round of scrapes; processes that are gone are forgotten."""
        seen = set()
        for one in scrapes:
            key = (one.target.address, one.target.pid)
            seen.add(key)
            history = self._history.setdefault(key, deque())
            if one.error is None:
                history.append(one)
            while len(history) > 2 and history[-1].at - history[0].at > self._window_s:
                history.popleft()
        for key in set(self._history) - seen:
            del self._history[key]

    def services(self) -> list[ServiceRow]:
        """One row per model type served, replicas added up."""
        by_model: dict[str, list[deque[Scrape]]] = defaultdict(list)
        for history in self._history.values():
            if history and history[-1].target.role == "service":
                by_model[history[-1].target.model].append(history)
        return [self._service_row(model, histories) for model, histories in sorted(by_model.items())]

    def trainers(self) -> list[TrainerRow]:
        """One row per model type's trainers."""
        by_model: dict[str, list[Scrape]] = defaultdict(list)
        for history in self._history.values():
            if history and history[-1].target.role == "trainer":
                by_model[history[-1].target.model].append(history[-1])
        rows = []
        for model, latest in sorted(by_model.items()):
            metrics = sorted({f"{dict(labels)['metric']} {value:.4g}" for one in latest
                              for (name, labels), value in one.series.items() if name == "aiaas_training_metric"})
            rows.append(TrainerRow(
                model, len(latest), sum(s.total("aiaas_training_jobs_running") for s in latest),
                sum(s.total("aiaas_training_epochs_total") for s in latest),
                sum(s.total("aiaas_training_jobs_total", status="succeeded") for s in latest),
                sum(s.total("aiaas_training_jobs_total", status="failed") for s in latest), ", ".join(metrics)))
        return rows

    def _service_row(self, model: str, histories: Sequence[deque[Scrape]]) -> ServiceRow:
        latest = [h[-1] for h in histories]
        pairs = [(h[0], h[-1]) for h in histories if len(h) >= 2]
        span = max((last.at - first.at for first, last in pairs), default=0.0)

        def rate(name: str, **match: str) -> float:
            if span <= 0:
                return 0.0
            return sum(max(0.0, last.total(name, **match) - first.total(name, **match)) for first, last in pairs) / span

        jobs = rate("aiaas_jobs_total")
        errors = jobs - rate("aiaas_jobs_total", status="ok")
        before, after = _added([f.buckets("aiaas_job_duration_seconds") for f, _ in pairs]), _added(
            [last.buckets("aiaas_job_duration_seconds") for _, last in pairs])
        batches = rate("aiaas_batch_size_count")
        versions = sorted(set().union(*(s.label_values("aiaas_model_info", "version") for s in latest)), key=_numeric)
        return ServiceRow(
            model=model, replicas=len(latest), ready=sum(s.ready for s in latest), jobs_per_s=jobs,
            errors_per_s=max(0.0, errors), p50_s=quantile(0.5, before, after), p99_s=quantile(0.99, before, after),
            lag=sum(s.total("aiaas_consumer_lag_records") for s in latest),
            in_flight=sum(s.total("aiaas_jobs_in_flight") for s in latest),
            batch_size=rate("aiaas_batch_size_sum") / batches if batches > 0 else None,
            versions=",".join(f"v{v}" for v in versions) or "-",
            dead_letters=sum(s.total("aiaas_dead_letters_total") for s in latest),
        )


def _added(histograms: Sequence[dict[float, float]]) -> dict[float, float]:
    total: dict[float, float] = defaultdict(float)
    for histogram in histograms:
        for bound, count in histogram.items():
            total[bound] += count
    return dict(total)


def _numeric(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 30, version)
