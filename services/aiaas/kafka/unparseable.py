"""Records the Kafka client itself cannot parse: found, stepped over, and handed on by their coordinates.

aiokafka parses a record as it hands it out, so a record it cannot parse (a header key that is not
UTF-8, a corrupt batch) makes `getmany` raise, and that partition's position stays before it: a
plain poll loop fails on it for ever. `UnparseableSearch.step_over` finds the record by reading each
partition one record at a time, seeks past it, and returns an `UnreadableRecord` in its place (with
the good records read on the way), which the caller's admission ends as `UnparseableRecord`: a dead
letter carrying its coordinates. Used by the service pipeline's fetch loop and by the trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError

__all__ = ["UnreadableRecord", "UnparseableSearch", "is_unparseable"]

_log = logging.getLogger("aiaas.unparseable")


def is_unparseable(error: BaseException) -> bool:
    """True when `getmany` raised `error` because of a record, not because of the broker or the connection.

    aiokafka's Python parser raises CorruptRecordException; its C parser raises what decoding raised (e.g.
    UnicodeDecodeError for a header key that is not UTF-8). Every other KafkaError is not a record's fault.
    """
    if isinstance(error, KafkaError):
        return isinstance(error, CorruptRecordException)
    return isinstance(error, Exception)


@dataclass(frozen=True)
class UnreadableRecord:
    """Stands in for a record the Kafka client could not parse: it is dead-lettered by its coordinates."""

    topic: str
    partition: int
    offset: int
    unreadable: str
    """What the client said when parsing it."""
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class UnparseableSearch:
    """Finds the record `getmany` could not parse and steps over it (see the module docstring).

    `consumer` is an AIOKafkaConsumer (or anything with its getmany/position/seek/seek_to_committed/assignment).
    Each partition is read at most `max_steps` records per search.
    """

    def __init__(self, consumer: Any, *, max_steps: int, logger: logging.Logger | None = None) -> None:
        self._consumer = consumer
        self._max_steps = max_steps
        self._log = logger or _log
        self._searches = 0  # searches in a row that found nothing (each waits longer for records to come back)

    async def step_over(self, error: BaseException,
                        next_offset: Mapping[TopicPartition, int]) -> dict[TopicPartition, list[Any]]:
        """getmany raised `error` on a record it cannot parse: the records read while finding it, ending with an
        `UnreadableRecord` in its place; reading resumes after it.

        The failed call may have moved other partitions past records it never returned, so those go back to
        `next_offset` (per partition, the offset after the last record the caller took); partitions it names no
        offset for go back to their committed offset. Then each partition is read one record at a time: one that
        fails twice at the same position holds an unreadable record there. A search that finds nothing (the
        record was not fetched again in time) leaves the next poll to fail and search again, waiting longer.
        """
        self._log.warning("the Kafka client could not parse a record (%s: %s); finding it", type(error).__name__, error)
        self._searches += 1
        assignment = self._consumer.assignment()
        for tp in assignment:
            if tp in next_offset and await self._consumer.position(tp) != next_offset[tp]:
                self._consumer.seek(tp, next_offset[tp])
        untaken = [tp for tp in assignment if tp not in next_offset]
        if untaken:
            await self._consumer.seek_to_committed(*untaken)
        wait_ms = min(1000, 100 * self._searches)
        found: dict[TopicPartition, list[Any]] = {}
        for tp in sorted(assignment):
            records = await self._read_one_by_one(tp, error, wait_ms)
            if records:
                found[tp] = records
        if any(isinstance(r, UnreadableRecord) for records in found.values() for r in records):
            self._searches = 0
        return found

    async def _read_one_by_one(self, tp: TopicPartition, error: BaseException, wait_ms: int) -> list[Any]:
        """Records of `tp` one per call (bounded), ending with an UnreadableRecord if one is found."""
        records: list[Any] = []
        failed_at: int | None = None
        empty_polls = 0
        for _ in range(self._max_steps):
            try:
                got = await self._consumer.getmany(tp, timeout_ms=wait_ms, max_records=1)
            except Exception as exc:
                if not is_unparseable(exc):
                    raise  # the broker or the connection: not a record's fault
                got, error = None, exc
            if got is None:
                position = await self._consumer.position(tp)
                if position == failed_at:
                    self._log.error("%s[%d]@%d cannot be parsed (%s: %s); dead-lettering it and reading on after it",
                                    tp.topic, tp.partition, position, type(error).__name__, error)
                    records.append(UnreadableRecord(tp.topic, tp.partition, position,
                                                    f"{type(error).__name__}: {error}"[:500]))
                    self._consumer.seek(tp, position + 1)
                    return records
                failed_at, empty_polls = position, 0
                continue
            if got.get(tp):
                records += got[tp]
                empty_polls = 0
                continue
            empty_polls += 1
            # Right after a failure the client answers empty once or twice before it has fetched the records again;
            # a partition that answers empty without having failed has nothing (more) for us now.
            if failed_at is None or empty_polls > 3:
                return records
        return records
