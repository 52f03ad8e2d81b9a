"""A replica that stood still past its group session (a zombie) commits nothing it held, and rejoins the group."""

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from aiaas.contract.codec import decode_result
from aiaas.kafka.stall_watch import LoopStallWatch
from aiaas.kafka.transactions import Transactions
from aiaas.serving.pipeline import JobPipeline
from aiaas.serving.worker import BatchWorker
from tests.fakes import FakeConsumer, RecordingSink, SumRuntime, job_record
from tests.unit.test_exactly_once import TOPICS, FakeTransactionalProducer
from tests.unit.test_pipeline import run_until


def test_the_watch_fires_once_per_gap_longer_than_its_limit():
    now, gaps = [0.0], []
    watch = LoopStallWatch(4.0, gaps.append, clock=lambda: now[0])
    for step in (0.25, 0.25, 3.9, 0.25, 6.0, 0.25):
        now[0] += step
        watch.check()
    assert gaps == [6.0] and watch.stalls == 1


class FreezingProducer(FakeTransactionalProducer):
    """Freezes the whole event loop (as SIGSTOP would) inside transaction `freeze_in`, after its sends."""

    def __init__(self, freeze_in: int, freeze_s: float) -> None:
        super().__init__()
        self.freeze_in, self.freeze_s = freeze_in, freeze_s
        self.committed_after_freeze: list[int] = []
        self.frozen_at: float | None = None

    async def send_offsets_to_transaction(self, offsets, group_id):
        await super().send_offsets_to_transaction(offsets, group_id)
        if self.transactions == self.freeze_in:
            time.sleep(self.freeze_s)  # blocks the loop: no task runs, no heartbeat would go out
            self.frozen_at = time.monotonic()

    async def commit_transaction(self):
        if self.frozen_at is not None and self.transactions == self.freeze_in:
            self.committed_after_freeze.append(self.transactions)
        await super().commit_transaction()


def rejoining(consumer, committed, pipeline_of):
    """A rejoin as the group would answer it: the partitions come back at their committed offsets."""
    calls = []

    def rejoin():
        calls.append(time.monotonic())
        for tp in consumer.log:
            consumer.offsets[tp] = committed().get(tp, 0)
        asyncio.get_running_loop().create_task(pipeline_of().rebalance_listener.on_partitions_assigned(set(consumer.log)))

    return rejoin, calls


async def test_exactly_once_a_transaction_open_across_a_freeze_is_aborted_and_its_jobs_run_again_after_a_rejoin():
    producer = FreezingProducer(freeze_in=2, freeze_s=1.3)
    consumer = FakeConsumer({0: [job_record(i, [float(i)]) for i in range(40)]})
    worker = BatchWorker(SumRuntime(), producer, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline: JobPipeline | None = None
    rejoin, rejoins = rejoining(consumer, lambda: producer.offsets, lambda: pipeline)
    pipeline = JobPipeline(worker, consumer, max_batch=4, max_wait_ms=1, max_in_flight=16, drain_timeout_s=10,
                           transactions=Transactions(producer, "p.vision"), stall_after_s=1.0, rejoin=rejoin)
    stats = await run_until(pipeline, lambda: len(producer.results()) == 40)
    assert producer.committed_after_freeze == []  # the zombie's transaction was aborted, not committed
    assert stats.stalls == 1 and len(rejoins) == 1 and producer.aborts >= 1
    assert sorted(producer.results()) == sorted(f"job-{i}" for i in range(40))  # each once
    assert producer.offsets == {TopicPartition("p.vision.infer", 0): 40}


class FreezingSink(RecordingSink):
    """Freezes the event loop on the first send of job `freeze_on`."""

    def __init__(self, freeze_on: str, freeze_s: float) -> None:
        super().__init__()
        self.freeze_on, self.freeze_s, self.frozen = freeze_on, freeze_s, False

    def result_job_ids(self) -> list[str]:
        return [decode_result(value, 1 << 20).job_id for _, value, _, _ in self.on(TOPICS.results)]

    async def send(self, topic, value, *, key, headers):
        if not self.frozen and key == self.freeze_on.encode():
            self.frozen = True
            time.sleep(self.freeze_s)
        return await super().send(topic, value, key=key, headers=headers)


@pytest.mark.parametrize("commit_interval_ms", [0, 60_000])
async def test_at_least_once_batches_cut_before_a_freeze_are_not_published_and_every_job_is_answered(
        commit_interval_ms):
    sink = FreezingSink("job-6", 1.3)
    consumer = FakeConsumer({0: [job_record(i, [float(i)]) for i in range(40)]})
    worker = BatchWorker(SumRuntime(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline: JobPipeline | None = None
    rejoin, rejoins = rejoining(consumer, lambda: {tp: o for tp, o in ((TopicPartition('p.vision.infer', p), o)
                                                                       for p, o in consumer.last_commits().items())},
                                lambda: pipeline)
    pipeline = JobPipeline(worker, consumer, max_batch=4, max_wait_ms=1, max_in_flight=16, drain_timeout_s=10,
                           stall_after_s=1.0, rejoin=rejoin, commit_interval_ms=commit_interval_ms)
    stats = await run_until(pipeline, lambda: len(set(sink.result_job_ids())) == 40)
    assert stats.stalls == 1 and len(rejoins) == 1
    assert set(sink.result_job_ids()) == {f"job-{i}" for i in range(40)}
    # Batches cut before the freeze but not yet publishing were dropped: at most the one publishing repeats.
    assert len(sink.result_job_ids()) - 40 <= 4


async def test_a_revocation_after_the_group_dropped_us_commits_nothing_we_held():
    producer = FakeTransactionalProducer()
    consumer = FakeConsumer({0: [job_record(i, [float(i)]) for i in range(8)]})
    runtime = SumRuntime(delay_s=0.3)
    worker = BatchWorker(runtime, producer, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=16, drain_timeout_s=10,
                           transactions=Transactions(producer, "p.vision"))
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(5):
        while not runtime.batches and len(pipeline._window) == 0:  # noqa: SLF001
            await asyncio.sleep(0.01)
    consumer._coordinator = SimpleNamespace(generation=-1)  # as aiokafka leaves it on UNKNOWN_MEMBER_ID
    await pipeline.rebalance_listener.on_partitions_revoked(set(consumer.log))
    await asyncio.sleep(0.5)  # the batch in the model finishes meanwhile
    pipeline.stop()
    await asyncio.wait_for(task, 5)
    assert producer.results() == [] and producer.offsets == {}


async def test_stopping_does_not_wait_for_a_retry_whose_time_comes_during_the_drain():
    # SIGTERM comes while a batch is publishing and a retry is not yet due, so the model loop ends without it. It
    # falls due while the drain waits for the publish: it stays uncommitted (its next owner runs it), and the drain
    # ends with the publish instead of waiting out its timeout.
    retry_topic = TOPICS.retry
    due = time.time() + 0.3
    consumer = FakeConsumer({0: [job_record(0, [1.0], topic=retry_topic)]}, topic=retry_topic)
    infer = TopicPartition(TOPICS.infer, 0)
    consumer.log[infer], consumer.offsets[infer] = [job_record(0, [2.0])], 0
    class SlowSink(RecordingSink):
        async def send(self, topic, value, *, key, headers):
            await asyncio.sleep(0.8)
            return await super().send(topic, value, key=key, headers=headers)

    worker = BatchWorker(SumRuntime(), SlowSink(), topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=4, max_wait_ms=1, max_in_flight=16, drain_timeout_s=5,
                           due_at=lambda record: due if record.topic == retry_topic else None,
                           delayed_topic=retry_topic)
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(5):
        while len(pipeline._window) < 2 or not pipeline._publishing:  # noqa: SLF001 - the job publishing
            await asyncio.sleep(0.01)
    started = time.monotonic()
    pipeline.stop()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 2.5
    assert [list(commit) for commit in consumer.commits] == [[infer]]  # the job's offset; the retry's stays
