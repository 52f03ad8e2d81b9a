"""A delivered batch, counted into the service's metrics: each job's final status, end-to-end time and queue wait,
its retry or dead letter, and a finished generation's tokens and timing. Called once the broker has every outcome
(`BatchWorker.delivered`), so a batch that is rewound or aborted and runs again is counted once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence

from aiaas.metrics.serving import ServingMetrics
from aiaas.serving.batch import JobInFlight

__all__ = ["count_delivered"]


def count_delivered(metrics: ServingMetrics, jobs: Sequence[JobInFlight]) -> None:
    """Count a delivered batch's outcomes (labels added up first: one increment per label set, not per job)."""
    model = metrics.model
    now = time.time()
    answered: Counter[tuple[str, str, str]] = Counter()
    retried: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    end_to_end = metrics.job_seconds.labels(model)
    queue_wait = metrics.queue_wait_seconds.labels(model)
    for job in jobs:
        if job.superseded:
            continue  # a retry record of a job already answered: it publishes nothing
        if job.retry:
            retried[job.error.type_name if job.error is not None else "unknown"] += 1
            continue
        if job.error is not None:
            dead[job.error.type_name] += 1
        result = job.result
        task = (job.job.task or "") if job.job is not None else ""
        answered[task, result.status if result is not None else "error", job.tenant or ""] += 1
        if job.job is not None:
            end_to_end.observe(max(0.0, now - job.job.created_at))
        if result is not None and result.status == "ok":
            queue_wait.observe(result.timings.queue_wait_ms / 1000)
            if "completion_tokens" in result.outputs:
                _count_generation(metrics, result.outputs)
            if job.runtime is not None and not job.replayed:
                _watch_output(metrics, job.runtime, result.outputs)
    for (task, status, tenant), n in answered.items():
        metrics.jobs.labels(model, task, status, tenant).inc(n)
    for error_type, n in retried.items():
        metrics.retries.labels(model, error_type).inc(n)
    for error_type, n in dead.items():
        metrics.dead_letters.labels(model, error_type).inc(n)


def _count_generation(metrics: ServingMetrics, outputs: Mapping[str, object]) -> None:
    """Tokens in and out, time to first token and time per output token of a finished generation's usage."""
    model = metrics.model
    for direction, key in (("in", "prompt_tokens"), ("out", "completion_tokens")):
        tokens = outputs.get(key)
        if isinstance(tokens, int) and tokens > 0:
            metrics.tokens.labels(model, direction).inc(tokens)
    first = outputs.get("time_to_first_token_ms")
    if isinstance(first, int | float):
        metrics.time_to_first_token.labels(model).observe(first / 1000)
    rate = outputs.get("tokens_per_second")
    if isinstance(rate, int | float) and rate > 0:
        metrics.time_per_output_token.labels(model).observe(1 / rate)


def _watch_output(metrics: ServingMetrics, runtime: object, outputs: Mapping[str, object]) -> None:
    """The answer's output category, for model monitoring, where its runtime names one (`output_category`)."""
    category_of = getattr(runtime, "output_category", None)
    if category_of is None:
        return
    category = category_of(outputs)
    if category is not None:
        metrics.watch_output(getattr(runtime, "version", "?"), getattr(runtime, "output_profile", {}), category)
