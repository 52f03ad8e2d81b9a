"""Commits past transaction markers: an idle partition whose consumer stepped over markers after its last record
taken gets its position committed, so the group's lag can read 0; never a partition with a record in flight, none
with no record taken since it was assigned or rewound, none forgotten while its position was read."""

from __future__ import annotations

from aiokafka import TopicPartition

from aiaas.kafka.commit_window import InFlightWindow
from aiaas.kafka.past_markers import PastMarkerCommits
from tests.fakes import Record

TP = TopicPartition("p.vision.retry", 0)


class Consumer:
    def __init__(self, position: int, on_position=None) -> None:
        self.positions, self.commits, self.on_position = {TP: position}, [], on_position

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        if self.on_position is not None:
            self.on_position()
        return self.positions[tp]

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        self.commits.append(dict(offsets or {}))


async def test_an_idle_partition_past_its_last_record_commits_its_position_once():
    consumer = Consumer(position=11)  # records up to 9 taken and done; offset 10 is the transaction's marker
    past = PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: {TP: 10})
    assert await past.check() == {TP: 11}
    assert await past.check() == {}
    assert consumer.commits == [{TP: 11}]


async def test_nothing_is_committed_at_the_last_record_with_a_record_in_flight_or_with_none_taken():
    window = InFlightWindow(64)
    consumer = Consumer(position=10)
    assert await PastMarkerCommits(consumer, window, next_offsets=lambda: {TP: 10}).check() == {}  # no marker
    window.take([Record(TP.topic, TP.partition, 12, b"k", b"v")])
    consumer.positions[TP] = 14
    assert await PastMarkerCommits(consumer, window, next_offsets=lambda: {TP: 13}).check() == {}  # 12 in flight
    assert await PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: {}).check() == {}  # none taken
    assert consumer.commits == []


async def test_a_partition_forgotten_while_positions_are_read_is_not_committed():
    taken = {TP: 10}
    consumer = Consumer(position=11, on_position=taken.clear)  # a revocation's forget() runs during the await
    assert await PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: taken).check() == {}
    assert consumer.commits == []
