"""Notice when this process stood still long enough for its consumer group to drop it.

A replica frozen (SIGSTOP, a paused VM or container, a swap storm, a call that blocked the event
loop) sends no heartbeats. Once its session times out the group gives its partitions to the other
replicas; when it wakes it still holds the batches it had taken. In exactly-once mode it must not
commit them: aiokafka sends no group generation with a transaction's offsets (no KIP-447), so
the broker would take that zombie's transaction, and the jobs its partitions' new owner has run
meanwhile would be answered twice.

The event loop is the clock: a task that wakes every `tick_s` notes the time, and any code about
to commit calls `check()` first. A gap longer than `stall_after_s` (the session timeout less one
heartbeat interval: heartbeats run on this loop, so none went out) means the membership may be
gone; `on_stall` is called once per gap, before anything after the gap can commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["LoopStallWatch"]


class LoopStallWatch:
    """Calls `on_stall(gap_s)` when the event loop did not run for more than `stall_after_s`."""

    def __init__(self, stall_after_s: float, on_stall: Callable[[float], None], *, tick_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if stall_after_s <= tick_s:
            raise ValueError(f"stall_after_s ({stall_after_s}) must be above tick_s ({tick_s})")
        self.stall_after_s = stall_after_s
        self._on_stall = on_stall
        self._tick_s = tick_s
        self._clock = clock
        self._last = clock()
        self.stalls = 0

    def check(self) -> bool:
        """True (and `on_stall` called) when the loop stood still past `stall_after_s` since the last check."""
        now = self._clock()
        gap, self._last = now - self._last, now
        if gap <= self.stall_after_s:
            return False
        self.stalls += 1
        self._on_stall(gap)
        return True

    async def run(self) -> None:
        """Check every `tick_s` until cancelled."""
        self._last = self._clock()
        while True:
            await asyncio.sleep(self._tick_s)
            self.check()
