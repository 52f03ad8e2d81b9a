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


class QuickConsumer:
    """Commits at once, and remembers when (on the test's clock)."""

    def __init__(self, clock) -> None:  # noqa: ANN001
        self.clock, self.commits = clock, []

    async def commit(self, offsets):
        self.commits.append((round(self.clock(), 2), dict(offsets)))


def _timed(interval_s: float) -> tuple[QuickConsumer, OffsetCommitter]:
    """A committer with this interval, on the running loop's clock from now, and its consumer."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def clock() -> float:
        return loop.time() - started

    consumer = QuickConsumer(clock)
    return consumer, OffsetCommitter(consumer, interval_s=interval_s, clock=clock)


async def _settled(committer: OffsetCommitter) -> None:
    while committer.busy:
        await asyncio.sleep(0.005)


async def test_with_an_interval_the_batches_that_finish_within_it_share_one_commit():
    consumer, committer = _timed(interval_s=0.2)
    committer.add({P0: 1})  # the first after a quiet spell goes at once
    await asyncio.sleep(0.05)
    committer.add({P0: 2})
    await asyncio.sleep(0.05)
    committer.add({P0: 3, P1: 1})
    await _settled(committer)
    (first_at, first), (second_at, second) = consumer.commits
    assert first_at < 0.05 and first == {TopicPartition("t", 0): 1}
    assert second_at >= 0.2 and second == {TopicPartition("t", 0): 3, TopicPartition("t", 1): 1}  # one request


async def test_flush_commits_without_waiting_for_the_interval_and_forgotten_offsets_stay_uncommitted():
    consumer, committer = _timed(interval_s=5.0)
    committer.add({P0: 1})
    await asyncio.sleep(0.02)
    committer.add({P0: 2, P1: 4})
    committer.forget([P1])  # revoked while waiting for the interval
    await asyncio.sleep(0.02)
    assert committer.busy and len(consumer.commits) == 1  # waiting for the interval
    committer.flush()  # a drain
    await _settled(committer)
    assert [offsets for _, offsets in consumer.commits] == [{TopicPartition("t", 0): 1}, {TopicPartition("t", 0): 2}]
    assert consumer.commits[1][0] < 1.0
    committer.add({P1: 9})
    await asyncio.sleep(0.02)  # the task waits out the interval
    committer.forget(None)  # everything revoked meanwhile: nothing more is committed, not even an empty request
    committer.flush()
    await _settled(committer)
    assert len(consumer.commits) == 2


async def test_a_flush_while_idle_does_not_lift_the_interval_and_a_close_commits_at_once():
    consumer, committer = _timed(interval_s=0.2)
    committer.flush()  # nothing pending: nothing to hurry
    committer.add({P0: 1})
    await _settled(committer)
    committer.add({P0: 2})
    await _settled(committer)
    assert [at for at, _ in consumer.commits][1] >= 0.2  # the second waited for the interval
    committer.add({P0: 3})
    await asyncio.sleep(0.01)
    await committer.close(timeout_s=5)
    assert consumer.commits[-1][1] == {TopicPartition("t", 0): 3} and consumer.commits[-1][0] < 0.35
    assert not committer.busy


async def test_what_runs_before_each_commit_may_drop_what_is_pending():
    consumer = QuickConsumer(lambda: 0.0)
    committer: OffsetCommitter | None = None

    def stood_still() -> None:  # as the pipeline's stall watch does after a freeze
        assert committer is not None
        committer.forget(None)

    committer = OffsetCommitter(consumer, before_commit=stood_still)
    committer.add({P0: 5})
    await _settled(committer)
    assert consumer.commits == []


async def test_a_close_whose_commit_fails_unexpectedly_logs_it_and_returns(caplog):
    class BrokenConsumer:
        async def commit(self, offsets):
            await asyncio.sleep(0.01)
            raise RuntimeError("the client is closed")

    committer = OffsetCommitter(BrokenConsumer())
    committer.add({P0: 1})
    await committer.close(timeout_s=5)  # the pipeline's end, which may be ending for another error: no new one
    assert "the last offset commit failed" in caplog.text and not committer.busy
