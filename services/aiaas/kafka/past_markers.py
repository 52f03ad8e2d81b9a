"""Commits that let a consumer group's lag reach 0 where a partition ends in transaction markers.

A transactional producer ends each transaction with a control record (a marker) in every partition it wrote to; the
consumer steps over it, and over aborted records, without handing them out. The offsets the pipeline commits are
those after the last *record* done, so a partition whose last entries are markers keeps a committed offset short of
its end: the group's lag never reads 0, and an autoscaler on lag (KEDA, issue 5675) keeps replicas for it. Our own
retry topic is such a partition in exactly-once mode (its records are written in transactions), and so is any infer
topic an upstream system writes in transactions.

The pipeline's fetch loop calls `check` when it is idle, at most once a second, and only while nothing else moves
offsets (no batch being published or committed, no drain, no rejoin). For each partition it has taken records from
since they were assigned or last rewound, with none of them still in flight, whose consumer position is past the
offset after the last record taken: the consumer stepped over markers there, every record before them is done and
committed, and the position is committed. The fetch loop takes no record while the commit is in flight, so no batch
of that partition can commit a later offset meanwhile. A partition with no record taken since it was assigned is
left alone (its committed offset might predate work abandoned by a rewind or a revocation): its lag stays at one
marker until its next record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Protocol

from aiokafka import TopicPartition

from aiaas.kafka.commit_window import InFlightWindow, Partition

__all__ = ["PastMarkerCommits"]


class _Consumer(Protocol):
    def assignment(self) -> set[TopicPartition]: ...
    async def position(self, partition: TopicPartition) -> int: ...
    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None: ...


_POSITION_WAIT_S = 0.1
"""A position that is not known at once (being reset) is left for the next check."""


class PastMarkerCommits:
    """Commits idle partitions' positions past trailing markers, when `check` is called."""

    def __init__(self, consumer: _Consumer, window: InFlightWindow, *,
                 next_offsets: Callable[[], Mapping[TopicPartition, int]]) -> None:
        self._consumer, self._window = consumer, window
        self._next_offsets = next_offsets  # per partition: the offset after the last record the pipeline took
        self._done: dict[TopicPartition, int] = {}  # the position this committed last, per partition

    async def check(self) -> dict[TopicPartition, int]:
        """Commit the position of each idle partition the consumer has moved past its last record taken; returns
        what it committed. The caller makes sure nothing else moves offsets until it returns."""
        assigned, taken = self._consumer.assignment(), dict(self._next_offsets())
        for gone in set(self._done) - assigned:
            del self._done[gone]
        busy = self._window.first_pending()
        due: dict[TopicPartition, int] = {}
        for tp, next_offset in taken.items():
            if tp not in assigned or Partition(*tp) in busy:
                continue
            try:
                position = await asyncio.wait_for(self._consumer.position(tp), _POSITION_WAIT_S)
            except Exception:  # noqa: BLE001 - revoked, being reset or slow to answer: the next check
                continue
            if position > next_offset and position > self._done.get(tp, -1):
                due[tp] = position
        # A revocation may have forgotten a partition while the positions were read (its listener runs meanwhile):
        # commit only what is still as it was.
        now, busy = self._next_offsets(), self._window.first_pending()
        due = {tp: p for tp, p in due.items() if now.get(tp) == taken[tp] and Partition(*tp) not in busy}
        if due:
            await self._consumer.commit(due)
            self._done.update(due)
        return due
