"""Commits past transaction markers: an idle partition whose consumer stepped over markers gets its position
committed, so the group's lag can read 0; never while a record of it is in flight or a commit is."""

from __future__ import annotations

from aiokafka import TopicPartition

from aiaas.kafka.commit_window import InFlightWindow
from aiaas.kafka.past_markers import PastMarkerCommits
from tests.fakes import Record

TP = TopicPartition("p.vision.retry", 0)


class Consumer:
    def __init__(self, position: int, committed: int | None) -> None:
        self.positions, self.stored, self.commits = {TP: position}, committed, []

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.stored

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        self.commits.append(dict(offsets or {}))


def commits_for(consumer: Consumer, window: InFlightWindow, taken: dict, committing: bool = False):
    return PastMarkerCommits(consumer, window, next_offsets=lambda: taken, committing=lambda: committing)


async def test_an_idle_partition_past_its_last_record_commits_its_position_once():
    consumer = Consumer(position=11, committed=9)  # records 0..9 done; offset 10 is the transaction's marker
    past = commits_for(consumer, InFlightWindow(64), {TP: 10})
    assert await past.check() == {TP: 11}
    assert await past.check() == {}
    assert consumer.commits == [{TP: 11}]


async def test_nothing_is_committed_where_the_position_is_the_last_record_or_a_record_is_in_flight():
    window = InFlightWindow(64)
    assert await commits_for(Consumer(10, 9), window, {TP: 10}).check() == {}  # no marker after the last record
    window.take([Record(TP.topic, TP.partition, 12, b"k", b"v")])
    consumer = Consumer(14, 12)
    assert await commits_for(consumer, window, {TP: 13}).check() == {}
    assert await commits_for(consumer, InFlightWindow(64), {TP: 13}, committing=True).check() == {}
    assert consumer.commits == []


async def test_a_partition_with_no_record_taken_compares_with_its_committed_offset():
    consumer = Consumer(position=8, committed=7)  # restarted right after a commit that stopped at the marker
    assert await commits_for(consumer, InFlightWindow(64), {}).check() == {TP: 8}
    never = Consumer(position=3, committed=None)  # nothing committed: nothing known to step past
    assert await commits_for(never, InFlightWindow(64), {}).check() == {}
