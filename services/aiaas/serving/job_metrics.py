"""A delivered batch, counted into the service's metrics: each job's final status, end-to-end time and queue wait,
its retry or dead letter, and a finished generation's tokens and timing. Called once the broker has every outcome
(`BatchWorker.delivered`), so a batch that is rewound or aborted and runs again is counted once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from aiaas.metrics.serving import ServingMetrics
from aiaas.serving.batch import JobInFlight, record_key

__all__ = ["count_delivered"]


def count_delivered(metrics: ServingMetrics, jobs: Sequence[JobInFlight],
                    refused: Collection[tuple[str, int, int]] = ()) -> None:
    """Count a delivered batch's outcomes: labels added up and latencies gathered first, so each metric is touched
    once per batch, not once per job (a few microseconds a call, at thousands of jobs a second).

    A job whose outcome the broker refused for good (its `record_key` in `refused`) ended as an error and a dead
    letter. A job's task is a label only where the runtime accepted the job (a task is any string a client sends:
    as a label, each new one would be a new series for good)."""
    model = metrics.model
    now = time.time()
    answered: Counter[tuple[str, str, str]] = Counter()
    retried: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    end_to_end: list[float] = []
    queue_wait: list[float] = []
    watched: dict[int, tuple[object, list[Mapping[str, object]]]] = {}  # per runtime: the outputs of its answers
    for job in jobs:
        if job.superseded:
            continue  # a retry record of a job already answered: it publishes nothing
        if job.retry:
            retried[job.error.type_name if job.error is not None else "unknown"] += 1
            continue
        task = (job.job.task or "") if job.job is not None and job.prepared else ""
        if refused and record_key(job.record) in refused:
            answered[task, "error", job.tenant or ""] += 1
            dead["Undeliverable"] += 1
            continue
        if job.error is not None:
            dead[job.error.type_name] += 1
        result = job.result
        answered[task, result.status if result is not None else "error", job.tenant or ""] += 1
        if job.job is not None:
            end_to_end.append(now - job.job.created_at)
        if result is not None and result.status == "ok" and not job.replayed:  # a replayed answer's are its first's
            queue_wait.append(result.timings.queue_wait_ms / 1000)
            if "completion_tokens" in result.outputs:
                _count_generation(metrics, result.outputs)
            if job.runtime is not None:
                watched.setdefault(id(job.runtime), (job.runtime, []))[1].append(result.outputs)
    for (task, status, tenant), n in answered.items():
        metrics.jobs.labels(model, task, status, tenant).inc(n)
    for error_type, n in retried.items():
        metrics.retries.labels(model, error_type).inc(n)
    for error_type, n in dead.items():
        metrics.dead_letters.labels(model, error_type).inc(n)
    metrics.job_seconds.observe_many((model,), np.maximum(end_to_end, 0.0))  # clocks of two hosts may disagree
    metrics.queue_wait_seconds.observe_many((model,), queue_wait)
    for runtime, outputs in watched.values():
        _watch_outputs(metrics, runtime, outputs)


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


def _watch_outputs(metrics: ServingMetrics, runtime: object, answers: list[Mapping[str, object]]) -> None:
    """The answers' output categories, for model monitoring, where their runtime names them (`output_categories`)."""
    categories_of = getattr(runtime, "output_categories", None)
    if categories_of is None:
        return
    categories = [category for answer in answers for category in categories_of(answer)]
    if categories:
        metrics.watch_outputs(getattr(runtime, "version", "?"), getattr(runtime, "output_profile", {}), categories)
