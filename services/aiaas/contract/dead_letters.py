"""Dead letters on the wire: the original record's bytes with headers saying where it came from and why it failed.

Every service and trainer builds them here (`dlq_headers`), so an operator reads one format whatever wrote it.
`Origin` is where a job was first consumed; a retry record carries it too (`serving/retries.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aiaas.errors import AiaasError

__all__ = ["DLQ_HEADERS", "DLQ_VALUE_DROPPED", "DLQ_KEY_DROPPED", "DLQ_DROPPED_HEADERS", "Origin",
           "RecordCoordinates", "dlq_headers", "ORIGIN_TOPIC", "ORIGIN_PARTITION", "ORIGIN_OFFSET"]

ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET = "aiaas.origin.topic", "aiaas.origin.partition", "aiaas.origin.offset"

DLQ_HEADERS = (
    "aiaas.origin.topic",
    "aiaas.origin.partition",
    "aiaas.origin.offset",
    "aiaas.error.type",
    "aiaas.error.message",
    "aiaas.error.retriable",
    "aiaas.job.id",
    "aiaas.attempts",
)
"""Headers every dead-letter record carries (its value is the original message bytes)."""

DLQ_VALUE_DROPPED, DLQ_KEY_DROPPED = "aiaas.dlq.value.dropped_bytes", "aiaas.dlq.key.dropped_bytes"
DLQ_DROPPED_HEADERS = (DLQ_VALUE_DROPPED, DLQ_KEY_DROPPED)
"""Headers a service's dead letter adds when it leaves the original value or key out (too large to publish again,
or the broker refused the record): how many bytes were left out."""


class RecordCoordinates(Protocol):
    """A consumed record's coordinates (aiokafka's ConsumerRecord has them)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a job was first consumed: (topic, partition, offset)."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, record: RecordCoordinates) -> Origin:
        """The record's own coordinates."""
        return cls(record.topic, record.partition, record.offset)


def dlq_headers(record: Any, error: AiaasError, job_id: str | None, attempts: int = 1, *,
                origin: Origin | None = None) -> list[tuple[str, bytes]]:
    """The DLQ_HEADERS of a dead letter for `record` (every service and trainer uses these).

    `origin` is where the job was first consumed (from a retry record's checked headers); by default the
    record's own coordinates.
    """
    origin = origin or Origin.of(record)
    values = (origin.topic, origin.partition, origin.offset, error.type_name, str(error)[:1000],
              str(error.retriable).lower(), job_id or "", attempts)
    return [(name, str(value).encode()) for name, value in zip(DLQ_HEADERS, values, strict=True)]
