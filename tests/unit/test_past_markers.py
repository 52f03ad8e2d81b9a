"""Commits past transaction markers: an idle partition whose consumer stepped over markers after its last record
taken, or past its committed offset with no record taken since it was assigned, gets its position committed, so the
group's lag can read 0; never a partition with a record in flight, none forgotten while its position was read."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from aiaas.kafka.commit_window import InFlightWindow
from aiaas.kafka.past_markers import PastMarkerCommits
from tests.fakes import Record

TP = TopicPartition("p.vision.retry", 0)


class Consumer:
    def __init__(self, position: int, on_position=None, committed: int | None = None) -> None:
        self.positions, self.commits, self.on_position = {TP: position}, [], on_position
        self.group_offsets = {TP: committed}
        self.lookups = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        if self.on_position is not None:
            self.on_position()
        return self.positions[tp]

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        self.commits.append(dict(offsets or {}))
        self.group_offsets.update(offsets or {})

    async def committed(self, tp: TopicPartition) -> int | None:
        self.lookups += 1
        return self.group_offsets[tp]


async def test_an_idle_partition_past_its_last_record_commits_its_position_once():
    consumer = Consumer(position=11)  # records up to 9 taken and done; offset 10 is the transaction's marker
    past = PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: {TP: 10})
    assert await past.check() == {TP: 11}
    assert await past.check() == {}
    assert consumer.commits == [{TP: 11}]


async def test_nothing_is_committed_at_the_last_record_or_with_a_record_in_flight():
    window = InFlightWindow(64)
    consumer = Consumer(position=10)
    assert await PastMarkerCommits(consumer, window, next_offsets=lambda: {TP: 10}).check() == {}  # no marker
    window.take([Record(TP.topic, TP.partition, 12, b"k", b"v")])
    consumer.positions[TP] = 14
    assert await PastMarkerCommits(consumer, window, next_offsets=lambda: {TP: 13}).check() == {}  # 12 in flight
    assert consumer.commits == []


async def test_a_partition_with_none_taken_commits_a_position_past_the_groups_offset_looked_up_once_per_move():
    # Restarted after the last transaction's records were answered but before the marker after them was committed:
    # the consumer steps over the marker and hands out nothing.
    consumer = Consumer(position=11, committed=10)
    past = PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: {})
    assert await past.check() == {TP: 11} and consumer.commits == [{TP: 11}]
    assert await past.check() == {} and consumer.lookups == 1

    at_committed = Consumer(position=10, committed=10)  # nothing stepped over: nothing to commit, asked once
    past = PastMarkerCommits(at_committed, InFlightWindow(64), next_offsets=lambda: {})
    assert await past.check() == {} and await past.check() == {} and at_committed.lookups == 1
    at_committed.positions[TP] = 12  # stepped over a marker later: asked again
    assert await past.check() == {TP: 12} and at_committed.lookups == 2

    # No committed offset (a new group, or one whose offsets expired), and the records before the position gone or
    # markers: the position is committed, else an autoscaler reads the whole partition as lag.
    expired = Consumer(position=3, committed=None)
    assert await PastMarkerCommits(expired, InFlightWindow(64), next_offsets=lambda: {}).check() == {TP: 3}
    empty = Consumer(position=0, committed=None)
    assert await PastMarkerCommits(empty, InFlightWindow(64), next_offsets=lambda: {}).check() == {}


async def test_a_coordinator_that_does_not_answer_holds_nothing_up_and_a_failed_commit_is_tried_again():
    consumer = Consumer(position=11, committed=10)
    past = PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: {})
    answer = consumer.committed

    async def never(tp: TopicPartition) -> int | None:
        await asyncio.sleep(60)
        return 10

    consumer.committed = never
    started = time.monotonic()
    assert await past.check() == {} and time.monotonic() - started < 5
    consumer.committed = answer  # asked again, though the position did not move
    commit = consumer.commit

    async def refused(offsets=None) -> None:
        raise RuntimeError("rebalance in progress")

    consumer.commit = refused
    with pytest.raises(RuntimeError):
        await past.check()
    consumer.commit = commit
    assert await past.check() == {TP: 11}


async def test_a_record_taken_while_the_groups_offset_is_read_stops_that_commit():
    taken: dict[TopicPartition, int] = {}
    consumer = Consumer(position=11, committed=10)

    async def committed_then_a_record_arrives(tp: TopicPartition) -> int | None:
        taken[tp] = 12  # the fetch loop would not take one meanwhile; a revocation and reassignment might
        return 10

    consumer.committed = committed_then_a_record_arrives
    assert await PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: taken).check() == {}
    assert consumer.commits == []


async def test_a_partition_forgotten_while_positions_are_read_is_not_committed():
    taken = {TP: 10}
    consumer = Consumer(position=11, on_position=taken.clear)  # a revocation's forget() runs during the await
    assert await PastMarkerCommits(consumer, InFlightWindow(64), next_offsets=lambda: taken).check() == {}
    assert consumer.commits == []
