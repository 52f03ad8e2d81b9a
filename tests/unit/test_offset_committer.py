"""The at-least-once committer: one request at a time, the offsets of batches that finished meanwhile coalesced,
never backwards per partition, failures counted and survived."""

import asyncio

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from aiaas.kafka.commit_window import Partition
from aiaas.kafka.offset_committer import OffsetCommitter

P0, P1 = Partition("t", 0), Partition("t", 1)


class SlowConsumer:
    def __init__(self, fail_first: bool = False) -> None:
        self.commits: list[dict] = []
        self.fail_first = fail_first

    async def commit(self, offsets):
        await asyncio.sleep(0.05)
        if self.fail_first:
            self.fail_first = False
            raise CommitFailedError("rebalanced")
        self.commits.append(dict(offsets))


async def test_offsets_that_arrive_during_a_commit_go_in_the_next_one_and_never_backwards():
    consumer = SlowConsumer()
    committer = OffsetCommitter(consumer)
    committer.add({P0: 10})
    await asyncio.sleep(0)  # the first commit is in flight
    committer.add({P0: 20, P1: 5})
    committer.add({P0: 15})  # a batch that finished later but ends earlier: ignored
    while committer.busy:
        await asyncio.sleep(0.01)
    assert consumer.commits == [{TopicPartition("t", 0): 10}, {TopicPartition("t", 0): 20, TopicPartition("t", 1): 5}]


async def test_forgotten_partitions_are_not_committed_and_a_failed_commit_is_counted():
    consumer, failures = SlowConsumer(fail_first=True), []
    committer = OffsetCommitter(consumer, on_failure=lambda: failures.append(1))
    committer.add({P0: 3})
    await asyncio.sleep(0)
    committer.add({P0: 4, P1: 7})
    committer.forget([P1])
    while committer.busy:
        await asyncio.sleep(0.01)
    assert failures == [1] and committer.failures == 1
    assert consumer.commits == [{TopicPartition("t", 0): 4}]
