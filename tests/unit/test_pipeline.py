"""The pipeline with a fake consumer: bounded in-flight work, pausing, safe commits, rewind, drain."""

import asyncio
import threading
import time
import types

import numpy as np
import pytest

from aiaas.contract.codec import decode_result, encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.contract.topics import ModelTopics
from aiaas.serving import pipeline as pipeline_module
from aiaas.serving.pipeline import JobPipeline
from aiaas.serving.worker import BatchWorker
from tests.fakes import FakeConsumer, Record, RecordingSink, SumRuntime

TOPICS = ModelTopics.of("vision", "p")


def partition_log(partition: int, n: int) -> list[Record]:
    records = []
    for offset in range(n):
        job = Job(job_id=f"p{partition}-{offset}", model="vision",
                  inputs={"x": Tensor.from_numpy(np.array([offset], dtype=np.float32))})
        records.append(Record(TOPICS.infer, partition, offset, job.job_id.encode(), encode(job)))
    return records


class SlowSink(RecordingSink):
    """Acknowledges each send after `delay_s` (longer for the job ids in `slow`)."""

    def __init__(self, delay_s=0.0, slow=None):
        super().__init__()
        self.delay_s, self.slow = delay_s, slow or {}

    async def send(self, topic, value, *, key, headers):
        await asyncio.sleep(self.slow.get(key.decode(), self.delay_s))
        await super().send(topic, value, key=key, headers=headers)


def answered(sink) -> set[str]:
    return {decode_result(value, 1 << 20).job_id for _, value, _, _ in sink.on(TOPICS.results)}


def make_pipeline(consumer, sink, *, max_batch=8, max_in_flight=16, runtime=None, **options):
    worker = BatchWorker(runtime or SumRuntime(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    return JobPipeline(worker, consumer, max_batch=max_batch, max_wait_ms=1, max_in_flight=max_in_flight,
                       drain_timeout_s=10, **options)


async def run_until(pipeline, done, timeout=10.0):
    """Run the pipeline until `done()` holds, then stop it and return its stats."""
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.005)
    pipeline.stop()
    return await asyncio.wait_for(task, timeout)


async def test_every_job_is_answered_and_commits_reach_the_end_of_each_partition():
    consumer, sink = FakeConsumer({0: partition_log(0, 50), 1: partition_log(1, 30)}), RecordingSink()
    pipeline = make_pipeline(consumer, sink)
    stats = await run_until(pipeline, lambda: len(answered(sink)) == 80)
    assert answered(sink) == {f"p0-{i}" for i in range(50)} | {f"p1-{i}" for i in range(30)}
    assert consumer.last_commits() == {0: 50, 1: 30}  # and never went backwards
    assert stats.jobs == 80 and stats.batches >= 80 / 8 and stats.rewinds == 0


async def test_partitions_pause_while_the_in_flight_window_is_full():
    class CountingConsumer(FakeConsumer):
        handed = 0

        async def getmany(self, timeout_ms=0, max_records=None):
            out = await super().getmany(timeout_ms=timeout_ms, max_records=max_records)
            self.handed += sum(len(r) for r in out.values())
            return out

    consumer = CountingConsumer({0: partition_log(0, 120), 1: partition_log(1, 120)})
    most_in_flight = 0

    class ProbeSink(SlowSink):
        async def send(self, topic, value, *, key, headers):
            nonlocal most_in_flight
            most_in_flight = max(most_in_flight, consumer.handed - len(self.sent))
            await super().send(topic, value, key=key, headers=headers)

    sink = ProbeSink(delay_s=0.01)
    stats = await run_until(make_pipeline(consumer, sink, max_batch=8, max_in_flight=24),
                            lambda: len(answered(sink)) == 240)
    assert len(answered(sink)) == 240
    assert most_in_flight <= 24
    assert stats.pauses > 0 and consumer.pause_calls >= stats.pauses
    assert consumer.last_commits() == {0: 120, 1: 120}


@pytest.mark.parametrize(("max_poll_interval_s", "polls_expected"), [(300.0, False), (0.15, True)])
async def test_a_full_window_without_urgent_lanes_polls_its_paused_partitions_only_to_stay_in_the_group(
        monkeypatch, max_poll_interval_s, polls_expected):
    # Every partition is paused while the batch in flight waits on its slow results, and the idle wait's timeout
    # comes round several times. A poll naming a paused partition drops what aiokafka prefetched of it, so such a
    # poll is made only as often as Kafka's max.poll.interval needs: every `_KEEP_IN_GROUP_S` (made long here), or
    # a third of the interval where that is shorter.
    monkeypatch.setattr(pipeline_module, "_KEEP_IN_GROUP_S", 60.0)
    consumer, sink = FakeConsumer({0: partition_log(0, 16)}), SlowSink(delay_s=0.4)
    pipeline = make_pipeline(consumer, sink, max_batch=8, max_in_flight=8, max_poll_interval_s=max_poll_interval_s)
    await run_until(pipeline, lambda: len(answered(sink)) == 16)
    assert (consumer.polls_naming_paused > 0) is polls_expected, consumer.polls_naming_paused


async def test_a_slow_result_holds_back_its_partitions_commit_but_not_the_other_jobs():
    class GuardedConsumer(FakeConsumer):
        async def commit(self, offsets):
            if "p0-2" not in answered(sink):
                assert all(offset <= 2 for tp, offset in offsets.items() if tp.partition == 0), offsets
            await super().commit(offsets)

    consumer = GuardedConsumer({0: partition_log(0, 40), 1: partition_log(1, 40)})
    sink = SlowSink(slow={"p0-2": 0.3})
    await run_until(make_pipeline(consumer, sink, max_batch=4, max_in_flight=64),
                    lambda: len(answered(sink)) == 80)
    others_done_first = [decode_result(v, 1 << 20).job_id for _, v, _, _ in sink.on(TOPICS.results)]
    assert others_done_first.index("p0-2") > 40  # the other jobs did not wait for it
    assert consumer.last_commits() == {0: 40, 1: 40}


async def test_a_failed_publish_rewinds_to_the_first_unfinished_job_and_runs_it_again():
    class FlakySink(RecordingSink):
        failed = False

        async def send(self, topic, value, *, key, headers):
            if key == b"p0-13" and not self.failed:
                self.failed = True
                raise ConnectionError("broker gone")
            await super().send(topic, value, key=key, headers=headers)

    consumer, sink = FakeConsumer({0: partition_log(0, 40)}), FlakySink()
    stats = await run_until(make_pipeline(consumer, sink, max_batch=4), lambda: len(answered(sink)) == 40)
    assert stats.rewinds == 1
    assert consumer.seeks and all(offset <= 13 for _, offset in consumer.seeks)
    assert "p0-13" in answered(sink)
    assert consumer.last_commits() == {0: 40}


async def test_stop_drains_what_was_taken_and_commits_it():
    consumer = FakeConsumer({0: partition_log(0, 400)})
    sink = SlowSink(delay_s=0.005)
    pipeline = make_pipeline(consumer, sink, max_batch=8, max_in_flight=64)
    await run_until(pipeline, lambda: len(sink.sent) >= 20)
    taken = consumer.offsets[next(iter(consumer.log))]
    assert 20 <= taken < 400
    assert answered(sink) == {f"p0-{i}" for i in range(taken)}  # everything taken was answered
    assert consumer.last_commits() == {0: taken}


async def test_a_commit_interval_coalesces_the_batches_commits_and_a_stop_commits_at_once():
    consumer, sink = FakeConsumer({0: partition_log(0, 64), 1: partition_log(1, 64)}), RecordingSink()
    pipeline = make_pipeline(consumer, sink, max_batch=4, max_in_flight=8, commit_interval_ms=60_000)
    started = time.monotonic()
    await run_until(pipeline, lambda: len(answered(sink)) == 128)
    assert time.monotonic() - started < 10  # the stop's drain did not wait out the minute
    assert consumer.last_commits() == {0: 64, 1: 64}  # everything taken was committed by the drain
    assert len(consumer.commits) <= 3  # the first batch's, then the drain's (or one more): not one per batch (32)


async def test_a_revocation_commits_what_finished_without_waiting_for_the_commit_interval():
    consumer, sink = FakeConsumer({0: partition_log(0, 40)}), RecordingSink()
    pipeline = make_pipeline(consumer, sink, max_batch=4, max_in_flight=8, commit_interval_ms=60_000)
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(10):
        while len(answered(sink)) < 40:
            await asyncio.sleep(0.005)
    started = time.monotonic()
    await pipeline.rebalance_listener.on_partitions_revoked(set(consumer.log))
    assert time.monotonic() - started < 5  # the drain did not wait out the interval
    assert consumer.last_commits() == {0: 40}
    pipeline.stop()
    await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("instances", [1, 3])
async def test_a_crashed_model_loop_stops_the_pipeline_with_its_error_instead_of_hanging(instances):
    class BrokenWorker(BatchWorker):
        async def run(self, records, undeliverable=None):
            raise RuntimeError("bug in the worker")

    consumer = FakeConsumer({0: partition_log(0, 20)})
    worker = BrokenWorker(SumRuntime(), RecordingSink(), topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                          max_message_bytes=1 << 20, model_instances=instances)
    pipeline = JobPipeline(worker, consumer, max_batch=4, max_wait_ms=1, max_in_flight=8, drain_timeout_s=1,
                           model_instances=instances)
    with pytest.raises(RuntimeError, match="bug in the worker"):
        await asyncio.wait_for(pipeline.run(), 5)
    assert consumer.commits == []


class TwoAtOnceRuntime(SumRuntime):
    """The first batch takes long, the rest are quick; counts how many batches were in the model at once."""

    def __init__(self):
        super().__init__()
        self.calls, self.inside, self.most_inside = 0, 0, 0
        self._lock = threading.Lock()

    def infer(self, items):
        with self._lock:
            self.calls += 1
            first = self.calls == 1
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        time.sleep(0.3 if first else 0.01)
        with self._lock:
            self.inside -= 1
        return [{"sum": float(item.sum())} for item in items]


async def test_with_two_model_instances_two_batches_run_at_once_and_results_keep_the_order_they_were_cut_in():
    consumer, sink, runtime = FakeConsumer({0: partition_log(0, 40)}), RecordingSink(), TwoAtOnceRuntime()
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, model_instances=2)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=32, drain_timeout_s=10,
                           model_instances=2)
    stats = await run_until(pipeline, lambda: len(answered(sink)) == 40)
    assert runtime.most_inside == 2  # the slow first batch did not hold the second instance up
    order = [decode_result(value, 1 << 20).job_id for _, value, _, _ in sink.on(TOPICS.results)]
    assert order == [f"p0-{i}" for i in range(40)]  # batches that finished first still waited for their turn
    assert consumer.last_commits() == {0: 40} and stats.jobs == 40 and stats.rewinds == 0



async def test_on_the_event_loop_a_backlog_of_batches_does_not_hold_back_publishing_until_it_ends():
    events = []

    class Recorded(SumRuntime):
        def infer(self, items):
            events.append("infer")
            return super().infer(items)

    class RecordedSink(RecordingSink):
        async def send(self, topic, value, *, key, headers):
            events.append("send")
            await super().send(topic, value, key=key, headers=headers)

    consumer, sink = FakeConsumer({0: partition_log(0, 32)}), RecordedSink()
    worker = BatchWorker(Recorded(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, model_calls="event-loop")
    pipeline = JobPipeline(worker, consumer, max_batch=4, max_wait_ms=1, max_in_flight=32, drain_timeout_s=10)
    await run_until(pipeline, lambda: len(answered(sink)) == 32)
    infers = [i for i, e in enumerate(events) if e == "infer"]
    assert len(infers) >= 8
    # Between batches the loop runs the other ready tasks: the first batch's results go out while the next batches
    # are cut, not after the last of the eight.
    assert events.index("send") < infers[3]


async def test_a_record_the_client_cannot_parse_is_dead_lettered_by_its_coordinates_and_nothing_else_is_lost():
    consumer = FakeConsumer({0: partition_log(0, 30), 1: partition_log(1, 30)})
    consumer.unparseable = {(1, 12)}
    sink = RecordingSink()
    pipeline = make_pipeline(consumer, sink, max_batch=8, max_in_flight=16)
    stats = await run_until(pipeline, lambda: len(answered(sink)) == 59)
    assert answered(sink) == {f"p{p}-{o}" for p in (0, 1) for o in range(30)} - {"p1-12"}
    (dead,) = sink.on("p.dlq")
    headers = dead[3]
    assert headers["aiaas.error.type"] == b"UnparseableRecord"
    assert (headers["aiaas.origin.partition"], headers["aiaas.origin.offset"]) == (b"1", b"12")
    assert stats.unreadable == 1 and consumer.raised >= 1
    assert consumer.last_commits() == {0: 30, 1: 30}  # the partition's commits went on past it


def lane_log(topic: str, name: str, n: int) -> list[Record]:
    """`n` jobs `<name>-<offset>` on partition 0 of `topic`."""
    records = []
    for offset in range(n):
        job = Job(job_id=f"{name}-{offset}", model="vision",
                  inputs={"x": Tensor.from_numpy(np.array([offset], dtype=np.float32))})
        records.append(Record(topic, 0, offset, job.job_id.encode(), encode(job)))
    return records


def tenant_log(tenant: str, n: int) -> list[Record]:
    return lane_log(TOPICS.tenant_infer(tenant), tenant, n)


async def test_a_flooding_tenant_holds_only_its_share_and_another_tenants_jobs_go_into_the_next_batches():
    from aiokafka import TopicPartition

    consumer = FakeConsumer({})
    consumer.log = {TopicPartition(TOPICS.tenant_infer("alice"), 0): tenant_log("alice", 400),
                    TopicPartition(TOPICS.tenant_infer("bob"), 0): []}
    consumer.offsets = {tp: 0 for tp in consumer.log}
    runtime = SumRuntime(delay_s=0.01)  # 10 ms a batch: alice's 400 jobs take 50 batches
    sink = RecordingSink()
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision", max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=64, drain_timeout_s=10,
                           tenant_of=TOPICS.tenant_of, max_in_flight_per_tenant=32)
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(10):
        while len(sink.sent) < 40:
            await asyncio.sleep(0.002)
    assert max(len(b) for b in runtime.batches) == 8
    consumer.log[TopicPartition(TOPICS.tenant_infer("bob"), 0)].extend(tenant_log("bob", 4))  # bob publishes now
    asked_at = len(sink.sent)
    async with asyncio.timeout(10):
        while len([s for s in sink.sent if s[0].endswith(".bob")]) < 4:
            await asyncio.sleep(0.002)
    answered_between = len(sink.sent) - asked_at
    pipeline.stop()
    await asyncio.wait_for(task, 20)
    # Bob's jobs were fetched although alice had the window's worth queued, and cut into the next batches:
    # at most alice's share (32 queued) plus a batch or two went out before all of bob's were answered.
    assert answered_between <= 32 + 16, answered_between


class WakingConsumer(FakeConsumer):
    """A poll with a timeout returns as soon as records arrive (as aiokafka's does), not at the end of its wait."""

    def __init__(self, log: dict) -> None:
        super().__init__({})
        self.log, self.offsets = log, {tp: 0 for tp in log}
        self.arrived = asyncio.Event()

    def publish(self, tp, records: list[Record]) -> None:
        self.log[tp].extend(records)
        self.arrived.set()

    async def getmany(self, *partitions, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        out = await super().getmany(*partitions, max_records=max_records)
        if out or not timeout_ms:
            return out
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout_ms / 1000)
        except TimeoutError:
            return {}
        return await super().getmany(*partitions, max_records=max_records)


def bob_waiting_pipeline() -> tuple[JobPipeline, WakingConsumer, object]:
    from aiokafka import TopicPartition

    bob = TopicPartition(TOPICS.tenant_infer("bob"), 0)
    consumer = WakingConsumer({bob: []})
    worker = BatchWorker(SumRuntime(), RecordingSink(), topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=64, drain_timeout_s=10,
                           tenant_of=TOPICS.tenant_of, max_in_flight_per_tenant=32)
    return pipeline, consumer, bob


async def test_while_a_flood_holds_its_share_another_tenants_records_are_taken_the_moment_they_arrive():
    # Left in the client until a batch ended, bob's record would keep its partition out of the next fetch (aiokafka
    # fetches no partition whose records wait to be taken), and his next job would wait for that fetch to come back.
    pipeline, consumer, bob = bob_waiting_pipeline()

    async def bob_publishes() -> None:
        await asyncio.sleep(0.01)
        consumer.publish(bob, tenant_log("bob", 2))

    publishing = asyncio.create_task(bob_publishes())
    started = time.monotonic()
    await pipeline._records_or_a_batch_end([bob], 8, within_ms=5000)  # no batch ends meanwhile
    await publishing
    assert time.monotonic() - started < 2.5  # taken as they came, not when the wait ran out
    assert pipeline.in_flight[0] == 2


async def test_a_batch_ending_ends_the_wait_for_other_tenants_and_their_later_records_are_taken_by_the_next():
    pipeline, consumer, bob = bob_waiting_pipeline()

    async def a_batch_ends() -> None:
        await asyncio.sleep(0.01)
        pipeline._finished.set()

    ending = asyncio.create_task(a_batch_ends())
    started = time.monotonic()
    await pipeline._records_or_a_batch_end([bob], 8, within_ms=5000)
    await ending
    assert time.monotonic() - started < 2.5 and pipeline.in_flight[0] == 0  # the largest tenant's turn again
    pipeline._finished.clear()
    consumer.publish(bob, tenant_log("bob", 1))
    await pipeline._records_or_a_batch_end([bob], 8, within_ms=5000)
    assert pipeline.in_flight[0] == 1


async def test_between_batches_the_other_tasks_run_until_they_wait_and_an_always_ready_one_holds_them_up_briefly():
    from aiaas.serving.pipeline import _MOST_YIELDS, _let_ready_tasks_run

    steps = 0

    async def chain_of_short_steps(n: int) -> None:  # a fetch response read, the take, a publish, its send, ...
        nonlocal steps
        for _ in range(n):
            await asyncio.sleep(0)
            steps += 1

    chain = asyncio.create_task(chain_of_short_steps(8))
    await _let_ready_tasks_run()
    assert chain.done() and steps == 8  # one yield would have let it take one step before the next batch

    spinning, turns = True, 0

    async def always_ready() -> None:
        nonlocal turns
        while spinning:
            await asyncio.sleep(0)
            turns += 1

    spinner = asyncio.create_task(always_ready())
    await _let_ready_tasks_run()
    assert turns <= _MOST_YIELDS
    spinning = False
    await spinner


def lanes_pipeline(flood: int, urgent: int, max_in_flight_bytes: int | None = None, delay_s: float = 0.01,
                   **options):
    from aiokafka import TopicPartition

    consumer = FakeConsumer({})
    infer, lane = TopicPartition(TOPICS.infer, 0), TopicPartition(TOPICS.urgent, 0)
    consumer.log = {infer: lane_log(TOPICS.infer, "flood", flood), lane: lane_log(TOPICS.urgent, "urgent", urgent)}
    consumer.offsets = {tp: 0 for tp in consumer.log}
    runtime = SumRuntime(delay_s=delay_s)  # a batch's time
    sink = RecordingSink()
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision", max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=64, drain_timeout_s=10,
                           max_in_flight_bytes=max_in_flight_bytes, is_urgent=TOPICS.is_urgent, **options)
    return pipeline, consumer, sink, lane


def answered_ids(sink, prefix: str) -> list[str]:
    return [job_id for job_id in (decode_result(v, 1 << 20).job_id for _, v, _, _ in sink.on(TOPICS.results))
            if job_id.startswith(prefix)]


async def test_urgent_jobs_are_taken_first_when_the_window_reopens_and_go_into_the_next_batch():
    pipeline, consumer, sink, lane = lanes_pipeline(flood=400, urgent=0)
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(10):
        while len(sink.sent) < 40:
            await asyncio.sleep(0.002)
    assert consumer.pause_calls  # the infer topic filled the window
    consumer.log[lane].extend(lane_log(TOPICS.urgent, "urgent", 4))
    asked_at = len(sink.sent)
    async with asyncio.timeout(10):
        while len(answered_ids(sink, "urgent")) < 4:
            await asyncio.sleep(0.002)
    answered_between = len(sink.sent) - asked_at
    pipeline.stop()
    await asyncio.wait_for(task, 20)
    # Without the lane they would queue behind the window's 64 flood jobs; with it, at most the batch in the model,
    # one cut before the window reopened and the flood's oldest quarter of the next one (two) go before them.
    assert answered_between <= 3 * 8, answered_between
    assert len(answered_ids(sink, "flood")) + 4 == len(sink.sent)


async def test_a_full_window_with_its_urgent_lanes_at_their_cap_polls_them_only_to_stay_in_the_group(monkeypatch):
    # The window is full and the urgent lane holds its cap: nothing may be taken while a slow batch runs. A poll then
    # names the (paused) lane and drops what aiokafka prefetched of it, so it is made only for max.poll.interval.
    monkeypatch.setattr(pipeline_module, "_KEEP_IN_GROUP_S", 60.0)
    pipeline, consumer, sink, _ = lanes_pipeline(flood=100, urgent=100, delay_s=0.3)
    await run_until(pipeline, lambda: len(sink.sent) >= 16)
    assert consumer.pause_calls and consumer.polls_naming_paused == 0


async def test_a_flood_of_urgent_jobs_leaves_the_infer_topic_a_share_of_every_batch():
    pipeline, _, sink, _ = lanes_pipeline(flood=40, urgent=400)
    stats = await run_until(pipeline, lambda: len(answered_ids(sink, "flood")) == 40)
    assert len(answered_ids(sink, "urgent")) < 400 - 100  # the infer topic's 40 were done well before the lane's
    assert stats.jobs >= 40


async def test_with_an_idle_urgent_lane_and_a_byte_budget_the_infer_topic_is_served():
    # An empty window with a byte budget has room for one record (to learn their size): nothing kept for the urgent
    # lane may take that one away, or nothing would ever be taken.
    pipeline, _, sink, _ = lanes_pipeline(flood=100, urgent=0, max_in_flight_bytes=1 << 20)
    await run_until(pipeline, lambda: len(answered_ids(sink, "flood")) == 100)


async def test_under_a_byte_budget_a_flood_of_urgent_jobs_still_leaves_the_infer_topic_its_share():
    # Records of ~60 bytes and a budget of ~16 of them: bytes, not the record count, bound the window.
    pipeline, _, sink, _ = lanes_pipeline(flood=40, urgent=400, max_in_flight_bytes=1000)
    await run_until(pipeline, lambda: len(answered_ids(sink, "flood")) == 40)
    assert len(answered_ids(sink, "urgent")) < 400 - 100


async def test_a_tenant_flooding_its_urgent_lane_holds_only_its_share_while_another_tenant_is_active():
    from aiokafka import TopicPartition

    consumer = FakeConsumer({})
    alice, bob = TopicPartition(TOPICS.tenant_urgent("alice"), 0), TopicPartition(TOPICS.tenant_infer("bob"), 0)
    consumer.log = {alice: lane_log(alice.topic, "alice", 2000), bob: []}
    consumer.offsets = {tp: 0 for tp in consumer.log}
    sink = RecordingSink()
    worker = BatchWorker(SumRuntime(delay_s=0.01), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=64, drain_timeout_s=10,
                           tenant_of=TOPICS.tenant_of, max_in_flight_per_tenant=24, is_urgent=TOPICS.is_urgent)
    task = asyncio.create_task(pipeline.run())
    bobs = lane_log(bob.topic, "bob", 40)
    held = []
    for i, job in enumerate(bobs):  # bob publishes a job every 10 ms on his ordinary topic
        consumer.log[bob].append(job)
        await asyncio.sleep(0.01)
        if i >= 10:  # once bob has been active a while
            held.append(pipeline._window.load("alice"))  # noqa: SLF001 - what the share bounds, read only
    pipeline.stop()
    await asyncio.wait_for(task, 20)
    # Alone she could hold the urgent lanes' cap (48); beside bob, her share and at most one poll past it.
    assert max(held) <= 24 + 8, held


async def test_a_full_window_with_urgent_jobs_at_their_limit_still_polls_the_consumer():
    # Kafka's max.poll.interval counts from the last poll: a replica whose window stays full (slow batches, urgent
    # records at their limit, so none is taken) must go on polling within it, or the group drops it.
    max_poll_interval_s = 0.45
    pipeline, consumer, _, _ = lanes_pipeline(flood=400, urgent=400, delay_s=0.5,
                                              max_poll_interval_s=max_poll_interval_s)
    polls: list[float] = []
    getmany = consumer.getmany

    async def timed(*partitions, **kwargs):
        polls.append(time.monotonic())
        return await getmany(*partitions, **kwargs)

    consumer.getmany = timed
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(2.0)
    pipeline.stop()
    await asyncio.wait_for(task, 20)
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert max(gaps) < max_poll_interval_s, max(gaps)


async def test_a_kafka_call_that_never_returns_cannot_keep_a_stopped_pipeline_from_draining_and_returning(caplog,
                                                                                                      monkeypatch):
    monkeypatch.setattr(pipeline_module, "_STOP_FETCH_S", 0.3, raising=False)  # raising=False: fails by the hang before

    class HangingConsumer(FakeConsumer):
        """Hands out its records, then a poll that never returns (a Kafka call stuck for good)."""

        hung = False

        async def getmany(self, *partitions, timeout_ms=0, max_records=None):
            out = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
            if not any(out.values()) and all(self.offsets[tp] == len(log) for tp, log in self.log.items()):
                self.hung = True
                await asyncio.Event().wait()
            return out

    consumer, sink = HangingConsumer({0: partition_log(0, 20)}), SlowSink(delay_s=0.5)
    pipeline = make_pipeline(consumer, sink, max_batch=4, max_in_flight=32)
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(10):
        while not consumer.hung:
            await asyncio.sleep(0.005)
    assert len(answered(sink)) < 20  # still publishing when the stop comes: the drain after the cancel finishes it
    pipeline.stop()
    stats = await asyncio.wait_for(task, 5)  # returns: the stuck poll is cancelled after its grace
    assert answered(sink) == {f"p0-{i}" for i in range(20)} and stats.jobs == 20
    assert consumer.last_commits() == {0: 20}
    assert "the fetch loop has not stopped" in caplog.text and "getmany" in caplog.text


class HeldRuntime(SumRuntime):
    """Every call waits in the model until `release` is set; counts the calls inside."""

    def __init__(self):
        super().__init__()
        self.release, self.inside = threading.Event(), 0
        self._lock = threading.Lock()

    def infer(self, items):
        with self._lock:
            self.inside += 1
        self.release.wait(10)
        with self._lock:
            self.inside -= 1
        return super().infer(items)


class ConsumerWithFetcher(FakeConsumer):
    """A fake consumer with the two attributes of aiokafka's fetcher that `FetchPacing` sets."""

    def __init__(self, records_by_partition):
        super().__init__(records_by_partition)
        self._fetcher = types.SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=50)

    @property
    def fetch_settings(self):
        return self._fetcher._fetch_min_bytes, self._fetcher._fetch_max_wait_ms


async def held_pipeline(records: int, *, instances: int, max_batch: int, max_in_flight: int, log=None, **options):
    """A pipeline whose model calls wait for `runtime.release`, fed `records` jobs on one partition (or `log`: the
    records of each TopicPartition), with fetch pacing of 10 ms."""
    consumer, sink, runtime = ConsumerWithFetcher({0: partition_log(0, records)}), RecordingSink(), HeldRuntime()
    if log is not None:
        consumer.log, consumer.offsets = log, {tp: 0 for tp in log}
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, model_instances=instances)
    pipeline = JobPipeline(worker, consumer, max_batch=max_batch, max_wait_ms=1, max_in_flight=max_in_flight,
                           drain_timeout_s=10, model_instances=instances, busy_fetch_wait_ms=10, **options)
    task = asyncio.create_task(pipeline.run())
    return consumer, sink, runtime, pipeline, task


async def until(done, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize(("instances", "records", "paced"), [(1, 2, True), (2, 2, False), (2, 4, True)],
                         ids=["the one instance busy", "one of two busy", "both of two busy"])
async def test_fetches_wait_for_a_batch_of_jobs_only_while_every_model_instance_has_a_batch(instances, records,
                                                                                           paced):
    consumer, sink, runtime, pipeline, task = await held_pipeline(records, instances=instances, max_batch=2,
                                                                  max_in_flight=16)
    await until(lambda: runtime.inside == records // 2)
    record_bytes = len(partition_log(0, 1)[0].key) + len(partition_log(0, 1)[0].value)
    assert consumer.fetch_settings == ((2 * record_bytes, 10) if paced else (1, 50))
    runtime.release.set()
    await until(lambda: len(answered(sink)) == records)
    await until(lambda: consumer.fetch_settings == (1, 50))  # idle again: a lone job's fetch comes back at once
    pipeline.stop()
    await asyncio.wait_for(task, 5)


async def test_a_paused_window_leaves_the_fetches_unpaced():
    consumer, sink, runtime, pipeline, task = await held_pipeline(10, instances=1, max_batch=2, max_in_flight=2)
    await until(lambda: runtime.inside == 1 and pipeline.stats.pauses == 1)
    assert consumer.fetch_settings == (1, 50)  # (urgent lanes' fetches, if any, find nothing: a short wait would only
    # make them more frequent)
    runtime.release.set()
    await until(lambda: len(answered(sink)) == 10)
    pipeline.stop()
    await asyncio.wait_for(task, 5)
    assert consumer.fetch_settings == (1, 50)


def two_tenants_log():
    from aiokafka import TopicPartition

    return {TopicPartition(TOPICS.tenant_infer("alice"), 0): tenant_log("alice", 2),
            TopicPartition(TOPICS.tenant_infer("bob"), 0): tenant_log("bob", 2)}


def an_urgent_job_log():
    from aiokafka import TopicPartition

    return {TopicPartition(TOPICS.infer, 0): lane_log(TOPICS.infer, "job", 2),
            TopicPartition(TOPICS.urgent, 0): lane_log(TOPICS.urgent, "urgent", 1)}


@pytest.mark.parametrize(("log", "options"), [(two_tenants_log, {"tenant_of": TOPICS.tenant_of}),
                                              (an_urgent_job_log, {"is_urgent": TOPICS.is_urgent})],
                         ids=["two tenants", "an urgent job"])
async def test_fetches_are_not_paced_while_jobs_may_go_ahead_of_the_queue(log, options):
    records = log()
    consumer, sink, runtime, pipeline, task = await held_pipeline(0, instances=1, max_batch=8, max_in_flight=16,
                                                                  log=records, **options)
    await until(lambda: runtime.inside == 1 and pipeline.in_flight[0] == sum(map(len, records.values())))
    assert consumer.fetch_settings == (1, 50)  # their next job goes into the next batch: its fetch must not wait
    runtime.release.set()
    await until(lambda: len(sink.sent) == sum(map(len, records.values())))  # (tenants' results: their own topics)
    pipeline.stop()
    await asyncio.wait_for(task, 5)


class FetchSettingsRuntime(SumRuntime):
    """Notes the consumer's fetch settings at every model call."""

    def __init__(self, consumer):
        super().__init__(delay_s=0.02)
        self.consumer, self.during_calls = consumer, set()

    def infer(self, items):
        self.during_calls.add(self.consumer.fetch_settings)
        return super().infer(items)


@pytest.mark.parametrize(("model_calls", "paced"), [("thread", True), ("event-loop", False)])
async def test_fetches_are_paced_only_while_batches_run_on_model_threads(model_calls, paced):
    """A call on the event loop holds back every fetch and its answer until it ends: that paces them already."""
    consumer, sink = ConsumerWithFetcher({0: partition_log(0, 40)}), RecordingSink()
    runtime = FetchSettingsRuntime(consumer)
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, model_calls=model_calls)
    pipeline = JobPipeline(worker, consumer, max_batch=8, max_wait_ms=1, max_in_flight=64, drain_timeout_s=10,
                           busy_fetch_wait_ms=10)
    await run_until(pipeline, lambda: len(answered(sink)) == 40)
    assert any(wait == 10 for _, wait in runtime.during_calls) == paced
    assert consumer.fetch_settings == (1, 50)


async def test_with_a_latency_budget_fetches_are_not_paced():
    """A budget counts a job's time from when it was taken: time held at the broker would escape it."""
    consumer, sink, runtime, pipeline, task = await held_pipeline(2, instances=1, max_batch=2, max_in_flight=16,
                                                                  latency_budget_ms=1000)
    await until(lambda: runtime.inside == 1)
    assert consumer.fetch_settings == (1, 50)
    runtime.release.set()
    await until(lambda: len(answered(sink)) == 2)
    pipeline.stop()
    await asyncio.wait_for(task, 5)
