"""At-least-once offset commits: one committer per consumer, the highest safe offset per partition.

Batches finish in any order and each makes some offsets safe (`commit_window.py` says which). One task
commits them: it takes everything pending, commits it in one request, and goes on while more arrived
meanwhile. One committer keeps commits monotonic per partition, coalesces the offsets of batches that
finished during a commit's round trip, and lets a finished batch's memory go at once instead of waiting
for its own commit. A commit that fails (the group rebalanced, the coordinator moved) is counted and
logged: the partitions' next owner runs those jobs again.

With an interval, a commit starts no sooner than that after the one before, so the offsets of every batch that
finished in between go in one request. At a partial load a batch holds a job or a few, and a commit per batch is a
write to `__consumer_offsets` per job or so: the broker's work grows with its requests, not with the jobs they carry.
The price: a replica that dies loses at most the interval's commits, whose jobs its partitions' next owner runs
again (at-least-once already allows that). A drain or a rejoin does not wait for the interval (`flush`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from aiaas.kafka.commit_window import Partition

__all__ = ["OffsetCommitter", "CommittingConsumer"]

log = logging.getLogger("aiaas.pipeline")


class CommittingConsumer(Protocol):
    """The part of aiokafka's AIOKafkaConsumer the committer uses."""

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None: ...


class OffsetCommitter:
    """Commits offsets handed to it (`add`), one commit request at a time and at most one per `interval_s`, never
    going backwards per partition."""

    def __init__(self, consumer: CommittingConsumer, *, interval_s: float = 0.0,
                 on_idle: Callable[[], None] = lambda: None, on_failure: Callable[[], None] = lambda: None,
                 before_commit: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._before_commit = before_commit  # called before each request: may `forget` what is pending
        self._on_idle = on_idle  # called whenever a commit round ends (a drain waits for that)
        self._on_failure = on_failure
        self._clock = clock
        self._pending: dict[Partition, int] = {}  # highest safe offset per partition, not yet committed
        self._task: asyncio.Task[None] | None = None
        self._last_started = -math.inf  # clock() when the last commit request went out
        self._hurry = asyncio.Event()  # set by `flush`: commit what is pending without waiting for the interval
        self.failures = 0

    @property
    def busy(self) -> bool:
        """Offsets wait to be committed, or the commit task is alive (a commit in flight, or the interval being waited
        out)."""
        return bool(self._pending) or (self._task is not None and not self._task.done())

    def add(self, offsets: dict[Partition, int]) -> None:
        """Commit these offsets (next offset to read, per partition) soon; a lower one than pending is ignored."""
        for partition, offset in offsets.items():
            self._pending[partition] = max(offset, self._pending.get(partition, 0))
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._commit_pending(), name="aiaas-committer")

    def flush(self) -> None:
        """Commit what is pending now rather than when the interval allows (someone waits for it: a drain). Only the
        commit that waits now, or the next one if none waits, skips the interval."""
        if self.busy:
            self._hurry.set()

    async def close(self, timeout_s: float) -> None:
        """Commit what is pending without waiting for the interval, for at most `timeout_s`; then stop."""
        self.flush()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            except Exception as exc:  # noqa: BLE001 - whoever closes is ending for a reason of its own: keep that one
                log.warning("the last offset commit failed (%s); those jobs may be delivered again", exc)

    def forget(self, partitions: Iterable[Partition] | None = None) -> None:
        """Drop what is pending for `partitions` (all when None): they are no longer ours to commit."""
        if partitions is None:
            self._pending.clear()
        else:
            for partition in partitions:
                self._pending.pop(partition, None)

    async def _commit_pending(self) -> None:
        try:
            while self._pending:
                await self._interval_passed()
                self._before_commit()
                if not self._pending:
                    break  # forgotten meanwhile (revoked, or the replica stood still past its session)
                offsets, self._pending = self._pending, {}
                self._last_started = self._clock()
                try:
                    await self._consumer.commit({TopicPartition(*p): offset for p, offset in offsets.items()})
                except KafkaError as exc:  # e.g. the group rebalanced: the new owner re-runs these jobs
                    self.failures += 1
                    self._on_failure()
                    log.warning("offset commit failed (%s); those jobs may be delivered again", exc)
        finally:
            self._on_idle()

    async def _interval_passed(self) -> None:
        """Until `interval_s` after the last commit started, or a `flush` (used up here)."""
        wait_s = self._last_started + self._interval_s - self._clock()
        if wait_s > 0 and not self._hurry.is_set():
            try:
                await asyncio.wait_for(self._hurry.wait(), wait_s)
            except TimeoutError:
                pass
        self._hurry.clear()
