"""The records taken from Kafka and not yet in a batch, and how a batch is cut from them.

Records from the retry topic carry the time before which they may not run (`due_at`): they stay queued
until then and the records behind them are cut first, so a retry never blocks its partition's
neighbours or the infer topic. While several tenants have records in flight, a batch takes from each
tenant's ready records in turn, so a tenant with a long queue does not make the others wait behind it.

Records of a higher rank (`rank_of`: the urgent lane and the `aiaas.priority` header, `contract/priority.py`) are
cut before lower ones, within each tenant's turn, except that a quarter of every batch (`OLDEST_SHARE`) goes to the
oldest ready records whatever their rank, so a steady stream of urgent jobs never stalls the rest. (Batches too
small for a quarter to be a record: one cut in four is oldest first.) With no ranked record queued (the usual
case) a cut sorts nothing.

A cut that puts a few jobs ahead of a backlog cuts a short batch: the jobs ranked above the rank most ready jobs
have, or while one tenant's line is the longest, the other tenants' jobs (retries are no tenant); with them, a
quarter of `max_batch` of the backlog (or as many as the favoured's longest line, when that is more). A batch's time
on a CPU grows with its jobs (admission, results, their publish), so an urgent job, or a light tenant's job beside
another's flood, waits for the batch already running and then for a short one of its own, not for two full ones. A
cut is short only when that is at most half a batch and a full batch would still be left behind it, and never twice
in a row: whatever the favoured jobs' rate, shortening leaves the backlog at least about five eighths of its places
(the favoured jobs in the full cuts between take what their ranks and turns give them, as before).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from typing import Any

from aiaas.kafka.commit_window import Partition

__all__ = ["JobQueue", "OLDEST_SHARE"]

OLDEST_SHARE = 4
"""One record in this many of a batch is among the oldest, whatever the ranks: low priority keeps that share."""


class JobQueue:
    """Queued records, in the order they were taken; `delayed_topic`'s records wait for `due_at(record)`."""

    def __init__(self, *, due_at: Callable[[Any], float | None] = lambda record: None, delayed_topic: str | None = None,
                 owner_of: Callable[[str], Hashable] = lambda topic: None,
                 rank_of: Callable[[Any], int] = lambda record: 0,
                 clock: Callable[[], float] = time.time) -> None:
        self._records: deque[Any] = deque()
        self._due: dict[int, float] = {}  # id(record) → its time, for queued retry records that have one
        self._rank: dict[int, int] = {}  # id(record) → its rank, for queued records whose rank is not 0
        self._rank_of = rank_of
        self._ranked_cuts = 0  # cuts made while ranked records were queued
        self.last_ranked = -math.inf
        """time.monotonic() when a record whose rank is not 0 was last queued."""
        self._cut_short = False  # whether the last cut was a short one (`_places`)
        self._due_at = due_at
        self.delayed_topic = delayed_topic
        self._owner_of = owner_of
        self._retries_owner = owner_of(delayed_topic) if delayed_topic is not None else None
        """The retry topic's line in a cut in turns: not a tenant, so never a light tenant beside a backlog."""
        self._clock = clock

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._records)

    def extend(self, records: Iterable[Any]) -> None:
        """Queue records; a retry record's time is read from its headers once, here."""
        for record in records:
            if record.topic == self.delayed_topic and (due := self._due_at(record)) is not None:
                self._due[id(record)] = due
            if rank := self._rank_of(record):
                self._rank[id(record)] = rank
                self.last_ranked = time.monotonic()
            self._records.append(record)

    def ready(self, record: Any, now: float | None = None) -> bool:
        """Whether `record` may run now (anything but a retry whose time has not come)."""
        due = self._due.get(id(record))
        return due is None or due <= (now if now is not None else self._clock())

    def any_ready(self) -> bool:
        if len(self._due) < len(self._records):
            return True  # a record with no time to wait for
        now = self._clock()
        return any(due <= now for due in self._due.values())

    def waiting(self) -> int:
        """Queued retry records whose time has not come."""
        now = self._clock()
        return sum(1 for due in self._due.values() if due > now)

    def oldest_taken_ns(self) -> int | None:
        """When the longest-queued record was taken from Kafka (its `taken_ns`, set by the pipeline; a retry record
        has none); None when no queued record has one."""
        for record in self._records:
            if (taken_ns := getattr(record, "taken_ns", None)) is not None:
                return int(taken_ns)
        return None

    def until_next_due(self) -> float | None:
        """Seconds until the next waiting retry's time (at least a millisecond); None when none waits."""
        return max(0.001, min(self._due.values()) - self._clock()) if self._due else None

    def cut(self, max_batch: int, *, in_turns: bool) -> list[Any]:
        """Up to `max_batch` records that may run now, taken out of the queue; waiting retries stay.

        In queue order, or with `in_turns` (several tenants in flight) from each tenant's ready records in turn
        (each tenant's in queue order); highest rank first when ranked records are queued (see the module docstring).
        """
        now = self._clock()
        if in_turns:
            return self._cut_in_turns(max_batch, now)
        if self._rank:
            ready = [record for record in self._records if self.ready(record, now)]
            favoured = self._favoured(ready)
            places = self._places(max_batch, favoured, favoured, len(ready))
            return self._take_out(self._by_rank(ready, places, self._oldest_first_cut())[:places])
        self._cut_short = False
        batch: list[Any] = []
        kept: deque[Any] = deque()
        while self._records and len(batch) < max_batch:
            record = self._records.popleft()
            (batch if self.ready(record, now) else kept).append(record)
        kept.extend(self._records)
        self._records = kept
        self._taken(batch)
        return batch

    def forget(self, partitions: Collection[Partition] | None = None) -> None:
        """Drop the records of `partitions` (every record when None)."""
        if partitions is None:
            self._records.clear()
            self._due.clear()
            self._rank.clear()
        else:
            gone = [r for r in self._records if Partition(r.topic, r.partition) in partitions]
            self._records = deque(r for r in self._records if Partition(r.topic, r.partition) not in partitions)
            self._taken(gone)

    def _cut_in_turns(self, max_batch: int, now: float) -> list[Any]:
        lines: dict[Hashable, list[Any]] = {}
        for record in self._records:
            if self.ready(record, now):
                lines.setdefault(self._owner_of(record.topic), []).append(record)
        order = list(lines.values())
        tenants = [line for owner, line in lines.items() if owner != self._retries_owner]
        if len(tenants) > 1:  # the other tenants' jobs, favoured beside the longest line
            lengths = sorted(len(line) for line in tenants)
            max_batch = self._places(max_batch, sum(lengths[:-1]), lengths[-2], sum(len(line) for line in order))
        elif self._rank and order:  # one tenant's line (and retries): as without turns
            ready = [record for line in order for record in line]
            favoured = self._favoured(ready)
            max_batch = self._places(max_batch, favoured, favoured, len(ready))
        else:
            self._cut_short = False
        if self._rank and order:
            oldest_first = self._oldest_first_cut()
            order = [self._by_rank(line, max_batch // len(order), oldest_first) for line in order]
            # The tenant that goes first moves on each ranked cut: in queue order it is the one with the oldest ready
            # record, which ranks may leave queued for ever, and with fewer places than tenants only the first gets in.
            turn = self._ranked_cuts % len(order)
            order = order[turn:] + order[:turn]
        batch: list[Any] = []
        for turn in range(max_batch):
            for line in order:
                if turn < len(line) and len(batch) < max_batch:
                    batch.append(line[turn])
            if len(batch) == max_batch or all(turn >= len(line) for line in order):
                break
        return self._take_out(batch)

    def _favoured(self, ready: list[Any]) -> int:
        """How many of `ready` rank above the backlog: above the rank most of them have."""
        ranks = Counter(self._rank.get(id(record), 0) for record in ready)
        backlog = max(ranks, key=ranks.__getitem__, default=0)
        return sum(count for rank, count in ranks.items() if rank > backlog)

    def _places(self, max_batch: int, favoured: int, turn: int, ready: int) -> int:
        """How many records the cut takes: `max_batch`, or a short cut while `favoured` of the `ready` records go
        ahead of a backlog (see the module docstring) — those, and of the backlog `turn` (as many as the favoured's
        longest line) or a quarter of `max_batch`, whichever is more, at least `OLDEST_SHARE`. Short only when that
        is at most half a batch, a full batch would still be left behind it (so the next cut needs no wait to grow),
        and the previous cut was not short."""
        places = max(favoured + max(turn, max_batch // OLDEST_SHARE), OLDEST_SHARE)
        short = (favoured > 0 and places <= max_batch // 2 and ready >= places + max_batch
                 and not self._cut_short)
        self._cut_short = short
        return places if short else max_batch

    def _oldest_first_cut(self) -> bool:
        """Count a ranked cut; True on every `OLDEST_SHARE`-th (then batches too small for a quarter of their places
        to be a record are cut oldest first)."""
        self._ranked_cuts += 1
        return self._ranked_cuts % OLDEST_SHARE == 0

    def _by_rank(self, line: list[Any], places: int, oldest_first: bool) -> list[Any]:
        """`line` (ready records in queue order) in the order they go into `places` places of a batch: a quarter
        of the places to the oldest, the rest highest rank first (see the module docstring)."""
        oldest = places // OLDEST_SHARE or (len(line) if oldest_first else 0)
        return line[:oldest] + sorted(line[oldest:], key=self._rank_key)

    def _rank_key(self, record: Any) -> int:
        """Sort key: the highest rank first (sorting is stable: queue order among equals)."""
        return -self._rank.get(id(record), 0)

    def _take_out(self, batch: list[Any]) -> list[Any]:
        """Remove `batch`'s records from the queue, wherever they are in it."""
        taken = {id(record) for record in batch}
        self._records = deque(record for record in self._records if id(record) not in taken)
        self._taken(batch)
        return batch

    def _taken(self, records: Iterable[Any]) -> None:
        """Records that left the queue: their times and ranks are forgotten (an id may be reused once they are
        freed)."""
        for record in records:
            self._due.pop(id(record), None)
            self._rank.pop(id(record), None)
