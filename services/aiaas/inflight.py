"""Which consumed records are still in flight, and which offsets are safe to commit.

Records of one partition arrive in offset order but may finish out of order (a later batch's
results can be acknowledged before an earlier one's). A partition's offset is committed only
up to the first record that is not done yet, so a crash never skips a job (at-least-once).
The window also bounds the work in flight: the service pauses its partitions when it is full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["InFlightWindow", "Partition"]


class Partition(NamedTuple):
    """A topic partition, hashable (aiokafka's TopicPartition has the same two fields)."""

    topic: str
    partition: int


class _Entry:
    __slots__ = ("offset", "done")

    def __init__(self, offset: int) -> None:
        self.offset, self.done = offset, False


class InFlightWindow:
    """Tracks records from consumption until their outcome is acknowledged."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: dict[Partition, deque[_Entry]] = {}
        self._by_offset: dict[tuple[Partition, int], _Entry] = {}

    def __len__(self) -> int:
        """Records taken and not yet done."""
        return len(self._by_offset)

    @property
    def full(self) -> bool:
        """True when no more records may be taken until some finish."""
        return len(self) >= self.capacity

    @property
    def room(self) -> int:
        """How many more records may be taken now."""
        return max(0, self.capacity - len(self))

    def take(self, records: Iterable) -> None:
        """Start tracking consumed records (anything with topic, partition and offset)."""
        for record in records:
            key = Partition(record.topic, record.partition)
            entry = _Entry(record.offset)
            self._entries.setdefault(key, deque()).append(entry)
            self._by_offset[(key, record.offset)] = entry

    def finish(self, records: Iterable) -> dict[Partition, int]:
        """Mark records done; return the offsets that may now be committed (next offset to read)."""
        touched = set()
        for record in records:
            key = Partition(record.topic, record.partition)
            entry = self._by_offset.pop((key, record.offset), None)
            if entry is not None:  # records forgotten by `forget` (rewind, revocation) are ignored
                entry.done = True
                touched.add(key)
        commits = {}
        for key in touched:
            queue = self._entries[key]
            last = None
            while queue and queue[0].done:
                last = queue.popleft().offset
            if last is not None:
                commits[key] = last + 1
        return commits

    def offsets_after(self, records: Iterable) -> dict[Partition, int]:
        """The offsets `finish(records)` would return, without marking anything done (for a transaction)."""
        finishing = {(Partition(r.topic, r.partition), r.offset) for r in records}
        commits = {}
        for key in {partition for partition, _ in finishing}:
            last = None
            for entry in self._entries.get(key, ()):
                if not (entry.done or (key, entry.offset) in finishing):
                    break
                last = entry.offset
            if last is not None:
                commits[key] = last + 1
        return commits

    def first_pending(self) -> dict[Partition, int]:
        """Per partition, the first offset not yet done: where to rewind to on failure."""
        return {key: queue[0].offset for key, queue in self._entries.items() if queue}

    def forget(self, partitions: Iterable[Partition] | None = None) -> None:
        """Stop tracking the given partitions (all when None), e.g. after a rewind or a revocation."""
        keys = list(self._entries) if partitions is None else [Partition(*p) for p in partitions]
        for key in keys:
            for entry in self._entries.pop(key, ()):
                self._by_offset.pop((key, entry.offset), None)
