"""Which consumed records are still in flight, and which offsets are safe to commit.

Records of one partition arrive in offset order but may finish out of order (a later batch's
results can be acknowledged before an earlier one's). A partition's offset is committed only
up to the first record that is not done yet, so a crash never skips a job (at-least-once).
The window also bounds the work in flight: the service pauses its partitions when it is full.
It is full at `capacity` records or, with a byte budget, once the records taken hold that many
bytes (key and value), whichever comes first: a service fed large jobs stays within its memory.
It lets the consumer fetch only as many records as fit at the recent mean record size, so a
fetch overshoots the budget only by how much its records exceed that mean. A record
larger than the whole budget is still taken when the window is empty, or the partition behind
it would stall for ever.

It counts what is in flight per owner too (`owner_of(topic)`: the tenant whose topic a record came from), so the
pipeline can hold one tenant's partitions back while it has its share in flight, and another tenant's jobs still
find room.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from typing import NamedTuple, Protocol

from aiaas.contract.dead_letters import RecordCoordinates

__all__ = ["InFlightWindow", "Partition", "ConsumedRecord"]


class Partition(NamedTuple):
    """A topic partition, hashable (aiokafka's TopicPartition has the same two fields)."""

    topic: str
    partition: int


class ConsumedRecord(RecordCoordinates, Protocol):
    """What the window reads of a consumed record (aiokafka's ConsumerRecord has it): its coordinates and key."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


_MEAN_WEIGHT = 1 / 32
"""Weight of each new record in the moving mean of record sizes: it follows a change of job sizes within a
few hundred records, and one odd record barely moves it."""


class _Entry:
    __slots__ = ("offset", "size", "done", "owner", "urgent")

    def __init__(self, offset: int, size: int, owner: Hashable, urgent: bool) -> None:
        self.offset, self.size, self.done, self.owner, self.urgent = offset, size, False, owner, urgent


class InFlightWindow:
    """Tracks records from consumption until their outcome is acknowledged."""

    def __init__(self, capacity: int, max_bytes: int | None = None,
                 owner_of: Callable[[str], Hashable] | None = None,
                 is_urgent: Callable[[str], bool] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._entries: dict[Partition, deque[_Entry]] = {}
        self._by_offset: dict[tuple[Partition, int], _Entry] = {}
        self._bytes = 0  # of the records taken and not yet done
        self._mean_size: float | None = None  # a moving mean of the sizes taken: how many more fit
        self._owner_of = owner_of or (lambda topic: None)
        self._load: Counter[Hashable] = Counter()  # records taken and not yet done, per owner (tenant)
        self._is_urgent = is_urgent or (lambda topic: False)
        self.urgent = 0
        """Records of urgent lanes (`is_urgent(topic)`) taken and not yet done."""

    def load(self, owner: Hashable) -> int:
        """Records of `owner` (a tenant, as `owner_of(topic)` says) taken and not yet done."""
        return self._load[owner]

    def owners(self) -> list[Hashable]:
        """The owners with records in flight."""
        return list(self._load)

    def _release(self, entry: _Entry) -> None:
        """One record of `entry.owner` is no longer in flight (an owner with none left is dropped: tenants come and
        go)."""
        owner = entry.owner
        self.urgent -= entry.urgent
        self._load[owner] -= 1
        if self._load[owner] <= 0:
            del self._load[owner]

    def __len__(self) -> int:
        """Records taken and not yet done."""
        return len(self._by_offset)

    @property
    def bytes(self) -> int:
        """Bytes (keys and values) of the records taken and not yet done."""
        return self._bytes

    @property
    def mean_record_bytes(self) -> float:
        """A moving mean of the sizes (key and value) of the records taken; 0 before any was."""
        return self._mean_size or 0.0

    @property
    def full(self) -> bool:
        """True when no more records may be taken until some finish."""
        return self.room == 0

    @property
    def room(self) -> int:
        """How many more records may be taken now: 0 at the record bound; with a byte budget, as many as fit in
        what is left of it at the mean size of recent records (one before any was seen, or when the window is
        empty)."""
        room = self.capacity - len(self)
        if room <= 0 or self.max_bytes is None:
            return max(0, room)
        if self._mean_size is None:
            return 1  # nothing to estimate from yet: one record, and the next fetch knows its size
        fits = int((self.max_bytes - self._bytes) // max(self._mean_size, 1.0))
        if fits <= 0:
            return 0 if self._by_offset else 1  # an empty window takes even a record larger than the budget
        return min(room, fits)

    def take(self, records: Iterable[ConsumedRecord]) -> None:
        """Start tracking consumed records (anything with topic, partition, offset, key and value)."""
        for record in records:
            key = Partition(record.topic, record.partition)
            size = len(record.key or b"") + len(record.value or b"")
            entry = _Entry(record.offset, size, self._owner_of(record.topic), self._is_urgent(record.topic))
            self._entries.setdefault(key, deque()).append(entry)
            replaced = self._by_offset.get((key, record.offset))
            self._by_offset[(key, record.offset)] = entry
            self._bytes += size - (replaced.size if replaced is not None else 0)
            self._load[entry.owner] += 1
            self.urgent += entry.urgent
            if replaced is not None:
                self._release(replaced)
            mean = self._mean_size
            self._mean_size = size if mean is None else mean + (size - mean) * _MEAN_WEIGHT

    def finish(self, records: Iterable[ConsumedRecord]) -> dict[Partition, int]:
        """Mark records done; return the offsets that may now be committed (next offset to read)."""
        touched = set()
        for record in records:
            key = Partition(record.topic, record.partition)
            entry = self._by_offset.pop((key, record.offset), None)
            if entry is not None:  # records forgotten by `forget` (rewind, revocation) are ignored
                entry.done = True
                self._bytes -= entry.size
                self._release(entry)
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

    def offsets_after(self, records: Iterable[ConsumedRecord]) -> dict[Partition, int]:
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
                if self._by_offset.pop((key, entry.offset), None) is not None:
                    self._bytes -= entry.size
                    self._release(entry)
