"""Retries without blocking: a job whose failure is retriable goes to `<prefix>.<model>.retry`.

The service consumes its retry topic beside its infer topic. A retry record is the job's
original bytes with headers saying which attempt comes next (`aiaas.attempt`), when it may
run (`aiaas.retry.not_before`, Unix seconds), where the job first came from
(`aiaas.origin.*`) and why the last attempt failed (`aiaas.error.*`). The pipeline holds a
retry record back until its time has come, while the infer topic's jobs keep flowing, so a
failing job never stalls its partition. After `max_attempts` the job ends with an error
result and a dead letter that says how many attempts were made.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import AiaasError

__all__ = ["RetryPolicy", "ATTEMPT", "NOT_BEFORE", "ORIGIN_TOPIC", "ORIGIN_PARTITION", "ORIGIN_OFFSET",
           "attempt_of", "due_at", "origin_of"]

ATTEMPT = "aiaas.attempt"
NOT_BEFORE = "aiaas.retry.not_before"
ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET = "aiaas.origin.topic", "aiaas.origin.partition", "aiaas.origin.offset"


def _header(record, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None


def attempt_of(record) -> int:
    """Which attempt this record is (1 for a job straight from the infer topic)."""
    try:
        return max(1, int(_header(record, ATTEMPT) or 1))
    except ValueError:
        return 1


def due_at(record) -> float | None:
    """When a retry record may run (Unix seconds); None for records that may run at once."""
    try:
        value = _header(record, NOT_BEFORE)
        return float(value) if value is not None else None
    except ValueError:
        return None


def origin_of(record) -> tuple[str, int, int]:
    """(topic, partition, offset) where the job was first consumed, through any number of retries."""
    topic = _header(record, ORIGIN_TOPIC)
    try:
        if topic is not None:
            return topic, int(_header(record, ORIGIN_PARTITION) or -1), int(_header(record, ORIGIN_OFFSET) or -1)
    except ValueError:
        pass
    return record.topic, record.partition, record.offset


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_attempts` tries, waiting base, 2×base, 4×base … (at most `max_backoff_s`) between them."""

    max_attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0

    def should_retry(self, error: AiaasError, attempt: int) -> bool:
        """True when the error class allows another try and attempts remain."""
        return error.retriable and attempt < self.max_attempts

    def delay_s(self, attempt: int) -> float:
        """The wait before attempt `attempt + 1`."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))

    def retry_headers(self, record, error: AiaasError, attempt: int, now: float | None = None) -> list[tuple[str, bytes]]:
        """Headers of the retry record for the next attempt (origin kept from the first attempt)."""
        topic, partition, offset = origin_of(record)
        not_before = (now if now is not None else time.time()) + self.delay_s(attempt)
        values: Sequence[tuple[str, object]] = (
            (ATTEMPT, attempt + 1), (NOT_BEFORE, f"{not_before:.3f}"),
            (ORIGIN_TOPIC, topic), (ORIGIN_PARTITION, partition), (ORIGIN_OFFSET, offset),
            ("aiaas.error.type", error.type_name), ("aiaas.error.message", str(error)[:1000]),
        )
        return [(name, str(value).encode()) for name, value in values]
