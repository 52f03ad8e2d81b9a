"""Retries without blocking: a job whose failure is retriable goes to `<prefix>.<model>.retry`.

The service consumes its retry topic beside its infer topic. A retry record is the job's
original bytes with headers saying which attempt comes next (`aiaas.attempt`), when it may
run (`aiaas.retry.not_before`, Unix seconds), where the job first came from
(`aiaas.origin.*`) and why the last attempt failed (`aiaas.error.*`). The pipeline holds a
retry record back until its time has come, while the infer topic's jobs keep flowing, so a
failing job never stalls its partition. After `max_attempts` the job ends with an error
result and a dead letter that says how many attempts were made.

These headers are read only on the retry topic, and checked there (`RetryPolicy.state_of`): a
record with a missing, malformed, non-finite or far-future value is a dead letter, never a record
that waits for ever or stops the pipeline. On the infer topic they are ignored, so a dead letter
republished there as it is (a "redrive") runs as a fresh first attempt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiaas.contract.dead_letters import ORIGIN_OFFSET, ORIGIN_PARTITION, ORIGIN_TOPIC, Origin
from aiaas.contract.headers import RecordHeaders
from aiaas.errors import AiaasError, InvalidHeaders

__all__ = ["RetryPolicy", "RetryState", "Origin", "ATTEMPT", "NOT_BEFORE", "ORIGIN_TOPIC", "ORIGIN_PARTITION",
           "ORIGIN_OFFSET"]

ATTEMPT = "aiaas.attempt"
NOT_BEFORE = "aiaas.retry.not_before"

_MAX_ATTEMPT = 10_000
_LATE_SLACK_S = 300.0
"""A retry time further ahead than the longest backoff plus this (clock skew between replicas) is refused."""


class _WithHeaders(Protocol):
    """A consumed record as `due_at` reads it: its headers, whatever they hold."""

    @property
    def headers(self) -> Iterable[tuple[object, object]] | None: ...


@dataclass(frozen=True, slots=True)
class RetryState:
    """Which attempt a record is, and where its job first came from."""

    attempt: int
    origin: Origin


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
        delay: float = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return delay

    def retry_headers(self, origin: Origin, error: AiaasError, attempt: int, now: float | None = None
                      ) -> list[tuple[str, bytes]]:
        """Headers of the retry record for the next attempt (origin kept from the first attempt)."""
        not_before = (now if now is not None else time.time()) + self.delay_s(attempt)
        values: Sequence[tuple[str, object]] = (
            (ATTEMPT, attempt + 1), (NOT_BEFORE, f"{not_before:.3f}"),
            (ORIGIN_TOPIC, origin.topic), (ORIGIN_PARTITION, origin.partition), (ORIGIN_OFFSET, origin.offset),
            ("aiaas.error.type", error.type_name), ("aiaas.error.message", str(error)[:1000]),
        )
        return [(name, str(value).encode()) for name, value in values]

    def state_of(self, headers: RecordHeaders, now: float | None = None) -> RetryState:
        """The attempt and origin a retry-topic record carries; raises InvalidHeaders when they are not ours."""
        attempt = _integer(headers, ATTEMPT, 2, _MAX_ATTEMPT)
        self._checked_due(headers, now)
        topic = headers.get(ORIGIN_TOPIC)
        if not topic or len(topic) > 249:
            raise InvalidHeaders(f"a retry record needs header {ORIGIN_TOPIC} (a topic name)")
        return RetryState(attempt, Origin(topic, _integer(headers, ORIGIN_PARTITION, 0, 2**31 - 1),
                                          _integer(headers, ORIGIN_OFFSET, 0, 2**63 - 1)))

    def due_at(self, record: _WithHeaders) -> float | None:
        """When a retry record may run (Unix seconds); None when it may run at once.

        Never raises, whatever the record carries: the pipeline asks it of every queued retry. A value that is not
        a plausible time is None too, so the record runs at once and the worker dead-letters it (`state_of`).
        """
        for key, value in record.headers or ():
            if key == NOT_BEFORE and isinstance(value, bytes):
                try:
                    due = float(value)
                except ValueError:
                    return None
                return due if self._plausible(due, time.time()) else None
        return None

    def _checked_due(self, headers: RecordHeaders, now: float | None) -> float:
        raw = headers.get(NOT_BEFORE)
        try:
            due = float(raw) if raw is not None else math.nan
        except ValueError:
            due = math.nan
        if not self._plausible(due, now if now is not None else time.time()):
            raise InvalidHeaders(f"header {NOT_BEFORE} is not a retry time within "
                                 f"{self.max_backoff_s + _LATE_SLACK_S:.0f} s (Unix seconds)")
        return due

    def _plausible(self, due: float, now: float) -> bool:
        return math.isfinite(due) and due <= now + self.max_backoff_s + _LATE_SLACK_S


def _integer(headers: RecordHeaders, name: str, low: int, high: int) -> int:
    raw = headers.get(name)
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise InvalidHeaders(f"header {name} must be a whole number from {low} to {high}")
    return int(raw)
