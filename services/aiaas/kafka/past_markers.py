"""Commits that let a consumer group's lag reach 0 where a partition ends in transaction markers.

A transactional producer ends each transaction with a control record (a marker) in every partition it wrote to; the
consumer steps over it, and over aborted records, without handing them out. The offsets the pipeline commits are
those after the last *record* done, so a partition whose last entries are markers keeps a committed offset short of
its end: the group's lag never reads 0, and an autoscaler on lag (KEDA, issue 5675) keeps replicas for it. Our own
retry topic is such a partition in exactly-once mode (its records are written in transactions), and so is any infer
topic an upstream system writes in transactions.

Once a second, for every assigned partition with nothing in flight: where the consumer's position is past the last
record taken (it stepped over markers), that position is committed. Nothing in flight means every record before it
is done and committed, so the commit skips no job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from aiaas.kafka.commit_window import InFlightWindow, Partition

__all__ = ["PastMarkerCommits"]

log = logging.getLogger("aiaas.pipeline")


class _Consumer(Protocol):
    def assignment(self) -> set[TopicPartition]: ...
    async def position(self, partition: TopicPartition) -> int: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None: ...


class PastMarkerCommits:
    """Commits idle partitions' positions past trailing markers (`check`, or `run` once a second)."""

    def __init__(self, consumer: _Consumer, window: InFlightWindow, *, next_offsets: Callable[[], Mapping[
            TopicPartition, int]], committing: Callable[[], bool]) -> None:
        self._consumer, self._window = consumer, window
        self._next_offsets = next_offsets  # per partition: the offset after the last record the pipeline took
        self._committing = committing  # the pipeline has commits in flight: wait for them
        self._base: dict[TopicPartition, int] = {}  # per partition with no record taken: its committed offset
        self._done: dict[TopicPartition, int] = {}  # the position this committed last, per partition
        self.commits = 0

    async def run(self, every_s: float = 1.0) -> None:
        """`check` every `every_s` seconds until cancelled; a failed check is logged and tried again."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.check()
            except (KafkaError, TimeoutError, AssertionError) as exc:  # AssertionError: a partition just revoked
                log.debug("committing past transaction markers: %s", exc)

    async def check(self) -> dict[TopicPartition, int]:
        """Commit the position of each idle partition the consumer has moved past its last record; returns what
        it committed."""
        if self._committing():
            return {}
        assigned = self._consumer.assignment()
        for gone in (set(self._base) | set(self._done)) - assigned:
            self._base.pop(gone, None)
            self._done.pop(gone, None)
        busy, taken = self._window.first_pending(), self._next_offsets()
        due: dict[TopicPartition, int] = {}
        for tp in assigned:
            if Partition(*tp) in busy:
                continue
            position = await asyncio.wait_for(self._consumer.position(tp), 1.0)
            base = taken.get(tp)
            if base is None:
                base = await self._committed(tp, position)
            if position > base and position > self._done.get(tp, -1):
                due[tp] = position
        if due and not self._committing() and not set(map(Partition._make, due)) & set(self._window.first_pending()):
            await self._consumer.commit(due)
            self._done.update(due)
            self.commits += 1
        return due

    async def _committed(self, tp: TopicPartition, position: int) -> int:
        """The committed offset of a partition no record was taken from since it was assigned (asked once); with
        none committed, where the consumer started (there is nothing to step past)."""
        if tp not in self._base:
            committed = await self._consumer.committed(tp)
            self._base[tp] = committed if committed is not None and committed >= 0 else position
        return self._base[tp]
