"""Commits that let a consumer group's lag reach 0 where a partition ends in transaction markers.

A transactional producer ends each transaction with a control record (a marker) in every partition it wrote to; the
consumer steps over it, and over aborted records, without handing them out. The offsets the pipeline commits are
those after the last *record* done, so a partition whose last entries are markers keeps a committed offset short of
its end: the group's lag never reads 0, and an autoscaler on lag (KEDA, issue 5675) keeps replicas for it. Our own
retry topic is such a partition in exactly-once mode (its records are written in transactions), and so is any infer
topic an upstream system writes in transactions.

The pipeline's fetch loop calls `check` when it is idle, at most once a second, and only while nothing else moves
offsets (no batch being published or committed, no drain, no rejoin). A partition's position is committed when the
consumer has moved it past every record that needs answering, which it knows two ways:
- records were taken from it since it was assigned or last rewound, none is still in flight, and its position is
  past the offset after the last one taken: the consumer stepped over markers there, and every record before them
  is done and committed;
- none was taken since then, and its position is past the group's committed offset (read once each time the
  position moves; with none, past 0): the consumer handed out nothing between the two, so there are only markers,
  aborted records and records retention deleted there. (The consumer moves a position only as it hands records out
  or steps over what it never hands out; a rewind seeks back at once, and a fetch that failed part-way is sought
  back to the committed offsets before the fetch loop is idle again.) Without this, a group whose committed
  offsets expired (Kafka drops an empty group's after 7 days) would read as lag the whole of its partitions to an
  autoscaler, for as long as they took no new record.
The fetch loop takes no record while the commit is in flight, so no batch of that partition can commit a later
offset meanwhile.
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
    async def committed(self, partition: TopicPartition) -> int | None: ...


_POSITION_WAIT_S = 0.1
"""A position that is not known at once (being reset) is left for the next check."""
_COMMITTED_WAIT_S = 1.0
"""The group's committed offsets, asked of its coordinator: a coordinator that does not answer by then (moving, say)
is asked again when the position next moves (the fetch loop waits meanwhile)."""


class PastMarkerCommits:
    """Commits idle partitions' positions past trailing markers, when `check` is called."""

    def __init__(self, consumer: _Consumer, window: InFlightWindow, *,
                 next_offsets: Callable[[], Mapping[TopicPartition, int]]) -> None:
        self._consumer, self._window = consumer, window
        self._next_offsets = next_offsets  # per partition: the offset after the last record the pipeline took
        self._done: dict[TopicPartition, int] = {}  # the position this committed last, per partition
        self._looked: dict[TopicPartition, int] = {}  # untaken partitions: the position last compared with the group's

    async def check(self) -> dict[TopicPartition, int]:
        """Commit the position of each idle partition the consumer has moved past what needs answering (module
        docstring); returns what it committed. The caller makes sure nothing else moves offsets until it returns."""
        assigned, taken = self._consumer.assignment(), dict(self._next_offsets())
        for gone in (set(self._done) | set(self._looked)) - assigned:
            self._done.pop(gone, None)
            self._looked.pop(gone, None)
        busy = self._window.first_pending()
        due: dict[TopicPartition, int] = {}
        untaken: dict[TopicPartition, int] = {}
        for tp in sorted(assigned):
            if Partition(*tp) in busy:
                continue
            position = await self._position(tp)
            if position is None or position <= self._done.get(tp, -1):
                continue
            if tp in taken:
                if position > taken[tp]:
                    due[tp] = position
            elif self._looked.get(tp) != position:
                untaken[tp] = position
        if untaken:
            committed = await self._committed(list(untaken))
            for tp, position in untaken.items():
                if tp in committed:
                    self._looked[tp] = position
                    if position > (committed[tp] or 0):
                        due[tp] = position
        # A revocation may have forgotten a partition, or a record of it been taken, while the offsets were read (the
        # listener and the fetch loop run meanwhile): commit only what is still as it was.
        now, busy, assigned = self._next_offsets(), self._window.first_pending(), self._consumer.assignment()
        due = {tp: p for tp, p in due.items()
               if tp in assigned and now.get(tp) == taken.get(tp) and Partition(*tp) not in busy}
        if due:
            try:
                await self._consumer.commit(due)
            except BaseException:
                for tp in due:  # looked at again next time: the commit is retried
                    self._looked.pop(tp, None)
                raise
            self._done.update(due)
        return due

    async def _position(self, tp: TopicPartition) -> int | None:
        try:
            return await asyncio.wait_for(self._consumer.position(tp), _POSITION_WAIT_S)
        except Exception:  # noqa: BLE001 - revoked, being reset or slow to answer: the next check
            return None

    async def _committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None: it has none) that its coordinator gave in time."""
        answers = await asyncio.gather(*(asyncio.wait_for(self._consumer.committed(tp), _COMMITTED_WAIT_S)
                                         for tp in partitions), return_exceptions=True)
        return {tp: answer for tp, answer in zip(partitions, answers, strict=True)
                if answer is None or isinstance(answer, int)}
