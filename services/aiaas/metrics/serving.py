"""The metric families of a model service (OpenMetrics names, base units): jobs, latency, batches, the in-flight
window and consumer lag, retries and dead letters, the model version, and for generation, tokens and their timing.

The service records into them (`serving/job_metrics.py` per delivered batch, `serving/monitor.py` once a second for
the gauges); the pipeline's own tallies are read when scraped (`CountersOf`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from aiaas.metrics.drift import OutputDrift
from aiaas.metrics.families import LATENCY_BUCKETS, SIZE_BUCKETS, BatchHistogram, CountersOf, new_registry
from aiaas.metrics.pauses import LoopLag

__all__ = ["ServingMetrics", "PIPELINE_COUNTERS", "DRIFT_WINDOW"]

DRIFT_WINDOW = 1000
"""Answers per version whose output categories model monitoring compares with the version's reference."""
_VERSIONS_WATCHED = 3

PIPELINE_COUNTERS = {
    "pauses": ("aiaas_partition_pauses", "Times the in-flight window filled and the partitions were paused."),
    "rewinds": ("aiaas_rewinds", "Partition rewinds after a batch's outcomes could not be published."),
    "unreadable": ("aiaas_unreadable_records", "Records the Kafka client could not parse (dead-lettered)."),
    "commit_failures": ("aiaas_commit_failures", "Offset commits that failed (a later commit of the partition, or its "
                        "next owner, covers those jobs; they may be delivered again)."),
    "transactions": ("aiaas_transactions", "Exactly-once transactions committed."),
    "aborted_transactions": ("aiaas_transaction_aborts", "Exactly-once transactions aborted."),
    "stalls": ("aiaas_event_loop_stalls", "Times the event loop stood still longer than the group session allows."),
}
"""PipelineStats field → (counter name without `_total`, help)."""


class ServingMetrics:
    """One model service's metrics, on a registry of its own (`registry`, what its endpoint serves)."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.jobs = Counter("aiaas_jobs", "Jobs answered, by task, final status (ok or error) and tenant.",
                            ["model", "task", "status", "tenant"], registry=r)
        self.retries = Counter("aiaas_retries", "Jobs sent to the retry topic for another attempt, by error type.",
                               ["model", "error_type"], registry=r)
        self.dead_letters = Counter("aiaas_dead_letters", "Records dead-lettered, by error type.",
                                    ["model", "error_type"], registry=r)
        self.job_seconds = BatchHistogram(
            "aiaas_job_duration_seconds", "A job's end-to-end time: its `created_at` (the publisher's clock) until "
            "its result was acknowledged by the broker.", ["model"], LATENCY_BUCKETS, r)
        self.queue_wait_seconds = BatchHistogram(
            "aiaas_job_queue_wait_seconds", "A job's `created_at` until the worker took it into a batch.", ["model"],
            LATENCY_BUCKETS, r)
        self.model_seconds = Histogram("aiaas_batch_model_seconds", "One model call (a batch).", ["model"],
                                       registry=r, buckets=LATENCY_BUCKETS)
        self.batch_size = Histogram("aiaas_batch_size", "Jobs in one model call.", ["model"], registry=r,
                                    buckets=SIZE_BUCKETS)
        self.in_flight = Gauge("aiaas_jobs_in_flight", "Jobs taken from Kafka and not yet answered.", ["model"],
                               registry=r)
        self.in_flight_bytes = Gauge("aiaas_jobs_in_flight_bytes", "Bytes of the jobs in flight.", ["model"],
                                     registry=r)
        self.paused = Gauge("aiaas_partitions_paused", "Assigned partitions paused (the window is full).", ["model"],
                            registry=r)
        self.assigned = Gauge("aiaas_partitions_assigned", "Partitions assigned to this replica.", ["model"],
                              registry=r)
        self.lag_records = Gauge(
            "aiaas_consumer_lag_records", "Records of an assigned partition this replica has not taken yet (its "
            "high-water mark less the next offset to take).", ["model", "topic", "partition"], registry=r)
        self.lag_seconds = Gauge(
            "aiaas_consumer_lag_seconds", "How long the oldest record of an assigned partition that this replica has "
            "not taken yet has waited (since the partition's head passed it, sampled each second); 0 when none waits.",
            ["model", "topic", "partition"], registry=r)
        self.version = Info("aiaas_model", "The model version in service and the registry reference it follows.",
                            ["model"], registry=r)
        self.reloads = Counter("aiaas_model_reloads", "New versions taken into service without a restart.",
                               ["model"], registry=r)
        self.tokens = Counter("aiaas_generation_tokens", "Tokens of finished generations: `in` (prompt) and `out`.",
                              ["model", "direction"], registry=r)
        self.time_to_first_token = Histogram(
            "aiaas_generation_time_to_first_token_seconds", "From a generation's start to its first token.",
            ["model"], registry=r, buckets=LATENCY_BUCKETS)
        self.time_per_output_token = Histogram(
            "aiaas_generation_time_per_output_token_seconds", "Mean time between the output tokens of a generation.",
            ["model"], registry=r, buckets=LATENCY_BUCKETS)

        self.output_share = Gauge(
            "aiaas_model_output_share", "Share of each output category (predicted label, score bin) among the last "
            "answers of a version (up to 1,000).", ["model", "version", "category"], registry=r)
        self.output_drift = Gauge(
            "aiaas_model_output_drift", "How far the last answers' output categories moved from the version's "
            "held-out set at training time: the Jensen-Shannon distance, 0 (same spread) to 1 (nothing shared).",
            ["model", "version"], registry=r)
        self.drift: dict[str, OutputDrift] = {}
        """Per version served lately: its recent output categories (`watch_outputs`)."""
        self._shares_exported: set[tuple[str, ...]] = set()
        self._drift_exported: set[tuple[str, ...]] = set()
        self._pipeline_stats: Callable[[], object | None] = lambda: None
        self.registry.register(CountersOf(lambda: self._pipeline_stats(), PIPELINE_COUNTERS, {"model": model}))
        self.registry.register(LoopLag())  # sampled by the service's monitor (`watch_loop_lag`)
        self.reloads.labels(model)  # exported from 0

    def watch_outputs(self, version: str, reference: Mapping[str, float], categories: list[str]) -> None:
        """Answers of `version` fell in these categories (its reference: the version's `output_profile`)."""
        drift = self.drift.get(version)
        if drift is None:
            if len(self.drift) >= _VERSIONS_WATCHED:  # versions come and go with promotions: keep the latest few
                del self.drift[next(iter(self.drift))]
            drift = self.drift[version] = OutputDrift(reference, DRIFT_WINDOW)
        drift.add_many(categories)

    def sample_drift(self) -> None:
        """Set the share and drift gauges from the windows (once a second, not per answer); series of versions and
        categories gone are removed, the others set in place, so a scrape never sees them missing."""
        shares = {(self.model, version, category): share for version, drift in self.drift.items()
                  for category, share in drift.shares().items()}
        distances = {(self.model, version): distance for version, drift in self.drift.items()
                     if (distance := drift.distance()) is not None}
        for gauge, values, exported in ((self.output_share, shares, self._shares_exported),
                                        (self.output_drift, distances, self._drift_exported)):
            for labels in exported - values.keys():
                gauge.remove(*labels)
            for labels, value in values.items():
                gauge.labels(*labels).set(value)
            exported.clear()
            exported.update(values)

    def count_pipeline(self, stats: Callable[[], object | None]) -> None:
        """Export the pipeline's own tallies (PIPELINE_COUNTERS), read from `stats()` when scraped (the latest
        pipeline's, when a service runs several one after another)."""
        self._pipeline_stats = stats
