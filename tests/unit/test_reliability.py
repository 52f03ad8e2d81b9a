"""Retries through the retry topic, idempotent answers to repeated job ids, and exactly-once transactions.

The pipeline runs against in-memory fakes: a consumer whose retry partition receives what the
worker sends to the retry topic (as a broker would), and a transactional producer that keeps a
transaction's records apart until it commits.
"""

import asyncio
import time

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from aiaas.contract.codec import decode_result, encode
from aiaas.contract.dead_letters import Origin
from aiaas.contract.envelopes import Job, Tensor
from aiaas.contract.headers import read_headers
from aiaas.contract.topics import ModelTopics
from aiaas.errors import ModelFailure, TransactionFenced
from aiaas.kafka.transactions import Transactions
from aiaas.serving.idempotency import Outcome, OutcomeCache
from aiaas.serving.pipeline import JobPipeline
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.worker import BatchWorker
from tests.fakes import FakeConsumer, Record, RecordingSink, SumRuntime
from tests.unit.test_pipeline import run_until

TOPICS = ModelTopics.of("vision", "p")
DLQ = "p.dlq"


def job_records(n: int, *, partition: int = 0, ids=None) -> list[Record]:
    records = []
    for offset in range(n):
        job_id = ids[offset] if ids else f"job-{offset}"
        job = Job(job_id=job_id, model="vision", inputs={"x": Tensor.from_numpy(np.array([offset], dtype=np.float32))})
        records.append(Record(TOPICS.infer, partition, offset, job_id.encode(), encode(job)))
    return records


class Broker(FakeConsumer):
    """Consumer over the infer and retry topics; records sent to the retry topic are appended to its log."""

    def __init__(self, infer: list[Record]) -> None:
        super().__init__({0: infer}, topic=TOPICS.infer)
        self.retry_tp = TopicPartition(TOPICS.retry, 0)
        self.log[self.retry_tp] = []
        self.offsets[self.retry_tp] = 0

    def deliver(self, topic, value, key, headers) -> None:
        if topic == TOPICS.retry:
            log = self.log[self.retry_tp]
            log.append(Record(TOPICS.retry, 0, len(log), key, value, list(headers)))


class LoopbackSink(RecordingSink):
    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    async def send(self, topic, value, *, key, headers):
        await super().send(topic, value, key=key, headers=headers)
        self.broker.deliver(topic, value, key, headers)


class FlakyRuntime(SumRuntime):
    """Fails (retriably) every model call that holds one of `failing` job ids, `times` times per id."""

    def __init__(self, failing: set[str], times: int) -> None:
        super().__init__()
        self.failing, self.times, self.failures = failing, times, {}
        self.items_run = 0

    def prepare(self, job: Job):
        return (job.job_id, super().prepare(job))

    def infer(self, items):
        for job_id, _ in items:
            if job_id in self.failing and self.failures.get(job_id, 0) < self.times:
                self.failures[job_id] = self.failures.get(job_id, 0) + 1
                raise ModelFailure(f"transient failure for {job_id}")
        self.items_run += len(items)
        return super().infer([x for _, x in items])


def results(sink) -> list:
    return [decode_result(value, 1 << 20) for _, value, _, _ in sink.on(TOPICS.results)]


def make_pipeline(broker, sink, runtime, *, policy=None, outcomes=None, transactions=None, max_batch=1):
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic=DLQ, group="p.vision", max_message_bytes=1 << 20,
                         retry=policy, outcomes=outcomes)
    return JobPipeline(worker, broker, max_batch=max_batch, max_wait_ms=1, max_in_flight=16, drain_timeout_s=10,
                       due_at=(policy or RetryPolicy(max_attempts=1)).due_at, delayed_topic=TOPICS.retry,
                       transactions=transactions)


async def test_a_retriable_failure_is_retried_later_without_holding_back_the_jobs_behind_it():
    broker = Broker(job_records(10))
    sink = LoopbackSink(broker)
    policy = RetryPolicy(max_attempts=3, backoff_s=0.3, max_backoff_s=1)
    pipeline = make_pipeline(broker, sink, FlakyRuntime({"job-2"}, times=2), policy=policy)
    await run_until(pipeline, lambda: len(results(sink)) == 10)

    order = [r.job_id for r in results(sink)]
    assert order[-1] == "job-2" and sorted(order) == sorted(f"job-{i}" for i in range(10))
    assert all(r.status == "ok" for r in results(sink))
    retries = sink.on(TOPICS.retry)
    assert [h["aiaas.attempt"] for _, _, _, h in retries] == [b"2", b"3"]
    assert all(h["aiaas.origin.offset"] == b"2" and h["aiaas.origin.topic"] == TOPICS.infer.encode()
               for _, _, _, h in retries)
    first, second = (float(h["aiaas.retry.not_before"]) for _, _, _, h in retries)
    assert second - first >= 0.3  # backoff doubles: 0.3 s, then 0.6 s
    assert sink.on(DLQ) == []
    committed = {tp.topic: offset for commit in broker.commits for tp, offset in commit.items()}
    assert committed == {TOPICS.infer: 10, TOPICS.retry: 2}


async def test_a_retried_job_keeps_its_priority_header():
    records = job_records(3)
    records[1].headers = [("aiaas.priority", b"7")]
    broker = Broker(records)
    sink = LoopbackSink(broker)
    policy = RetryPolicy(max_attempts=2, backoff_s=0.01, max_backoff_s=0.05)
    pipeline = make_pipeline(broker, sink, FlakyRuntime({"job-1"}, times=1), policy=policy)
    await run_until(pipeline, lambda: len(results(sink)) == 3)
    ((_, _, _, headers),) = sink.on(TOPICS.retry)
    assert headers["aiaas.priority"] == b"7"


async def test_after_the_last_attempt_the_job_gets_an_error_result_and_a_dead_letter_naming_its_origin():
    broker = Broker(job_records(4))
    sink = LoopbackSink(broker)
    policy = RetryPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=0.05)
    pipeline = make_pipeline(broker, sink, FlakyRuntime({"job-1"}, times=99), policy=policy)
    await run_until(pipeline, lambda: len(results(sink)) == 4 and sink.on(DLQ))

    failed = [r for r in results(sink) if r.job_id == "job-1"]
    assert len(failed) == 1 and failed[0].status == "error" and failed[0].error.type == "ModelFailure"
    assert "gave up after 3 attempts" in failed[0].error.message
    ((_, value, _, headers),) = sink.on(DLQ)
    assert headers["aiaas.attempts"] == b"3" and headers["aiaas.origin.offset"] == b"1"
    assert headers["aiaas.origin.topic"] == TOPICS.infer.encode() and headers["aiaas.error.type"] == b"ModelFailure"
    assert value == broker.log[TopicPartition(TOPICS.infer, 0)][1].value  # the job's original bytes


async def test_errors_that_are_not_retriable_go_straight_to_the_dead_letter_topic():
    bad = Record(TOPICS.infer, 0, 0, b"bad-0", b"\xc1 not msgpack")
    broker = Broker([bad, *job_records(3)[1:]])
    sink = LoopbackSink(broker)
    pipeline = make_pipeline(broker, sink, SumRuntime(), policy=RetryPolicy(max_attempts=5))
    await run_until(pipeline, lambda: len(results(sink)) == 3)
    assert sink.on(TOPICS.retry) == [] and len(sink.on(DLQ)) == 1


def test_retry_headers_round_trip():
    policy = RetryPolicy(max_attempts=4, backoff_s=1, max_backoff_s=3)
    record = Record(TOPICS.infer, 2, 41, b"k", b"v")
    headers = policy.retry_headers(Origin.of(record), ModelFailure("x"), attempt=1, now=100.0)
    retried = Record(TOPICS.retry, 0, 0, b"k", b"v", headers)
    state = policy.state_of(read_headers(retried.headers), now=100.0)
    assert state.attempt == 2 and policy.due_at(retried) == 101.0
    again = Record(TOPICS.retry, 0, 1, b"k", b"v", policy.retry_headers(state.origin, ModelFailure("x"), 2, now=200.0))
    state = policy.state_of(read_headers(again.headers), now=200.0)
    assert state.attempt == 3 and policy.due_at(again) == 202.0
    assert state.origin == Origin(TOPICS.infer, 2, 41)  # still the first attempt's origin
    assert policy.delay_s(5) == 3  # capped
    assert policy.due_at(record) is None


async def test_a_repeated_job_id_gets_the_same_outcome_without_running_the_model_again():
    ids = ["a", "b", "a", "c", "b", "a"]
    broker = Broker(job_records(6, ids=ids))
    sink = LoopbackSink(broker)
    runtime = FlakyRuntime(set(), 0)
    pipeline = make_pipeline(broker, sink, runtime, outcomes=OutcomeCache(100), max_batch=3)
    await run_until(pipeline, lambda: len(results(sink)) == 6)
    assert runtime.items_run == 3  # a, b and c once each (twins in a batch, repeats across batches)
    by_id: dict[str, set[bytes]] = {}
    for _, value, key, _ in sink.on(TOPICS.results):
        by_id.setdefault(key.decode(), set()).add(value)
    assert {k: len(v) for k, v in by_id.items()} == {"a": 1, "b": 1, "c": 1}  # byte-identical repeats


def test_the_outcome_cache_forgets_the_oldest_first():
    cache = OutcomeCache(2)
    for job_id in "abc":
        cache.put(job_id, Outcome("t", job_id.encode()))
    assert cache.get("a") is None and cache.get("c").payload == b"c" and len(cache) == 2
    OutcomeCache(0).put("x", Outcome("t", b"x"))  # a window of 0 remembers nothing


class TransactionalBroker(Broker):
    """Also a transactional producer: records of an open transaction become visible only when it commits."""

    def __init__(self, infer, *, fail_sends_in_transaction: int | None = None, fence_at: int | None = None) -> None:
        super().__init__(infer)
        self.visible: list[tuple] = []
        self.open: list[tuple] | None = None
        self.transactions = 0
        self.aborts = 0
        self.txn_offsets: dict = {}
        self.fail_in, self.fence_at = fail_sends_in_transaction, fence_at

    async def begin_transaction(self):
        assert self.open is None, "transactions must not overlap"
        self.open, self.pending_offsets = [], {}
        self.transactions += 1

    async def send(self, topic, value, *, key, headers):
        assert self.open is not None, "a send outside a transaction"
        if self.transactions == self.fail_in:
            raise ConnectionError("broker went away")
        self.open.append((topic, value, key, dict(headers)))

    async def send_offsets_to_transaction(self, offsets, group_id):
        assert group_id == "p.vision"
        self.pending_offsets.update(offsets)

    async def commit_transaction(self):
        if self.transactions == self.fence_at:
            raise ProducerFenced()
        for topic, value, key, headers in self.open:
            self.visible.append((topic, value, key, headers))
            self.deliver(topic, value, key, headers)
        self.txn_offsets.update(self.pending_offsets)
        self.open = None

    async def abort_transaction(self):
        self.aborts += 1
        self.open = None

    def on(self, topic):
        return [v for v in self.visible if v[0] == topic]

    async def committed(self, tp) -> int | None:
        """The group's offsets are those the transactions committed (and any committed outside them after)."""
        outside = await super().committed(tp)
        return outside if outside is not None else self.txn_offsets.get(tp)


async def test_exactly_once_commits_outcomes_and_offsets_together_and_a_failed_transaction_runs_again():
    broker = TransactionalBroker(job_records(20), fail_sends_in_transaction=3)
    pipeline = make_pipeline(broker, broker, SumRuntime(), transactions=Transactions(broker, "p.vision"), max_batch=4)
    stats = await run_until(pipeline, lambda: len(broker.on(TOPICS.results)) == 20)
    ids = [key.decode() for _, _, key, _ in broker.on(TOPICS.results)]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(20))  # each exactly once, after an aborted transaction
    assert broker.aborts >= 1 and stats.aborted_transactions >= 1 and stats.rewinds >= 1
    assert broker.txn_offsets == {TopicPartition(TOPICS.infer, 0): 20}
    assert broker.commits == []  # no offset commits outside transactions


async def test_a_fenced_producer_stops_the_service():
    broker = TransactionalBroker(job_records(12), fence_at=2)
    pipeline = make_pipeline(broker, broker, SumRuntime(), transactions=Transactions(broker, "p.vision"), max_batch=4)
    with pytest.raises(TransactionFenced):
        await asyncio.wait_for(pipeline.run(), 10)
    assert len(broker.on(TOPICS.results)) == 4  # only the first transaction's results ever became visible


async def test_waiting_retries_do_not_keep_a_stopping_service_from_draining():
    broker = Broker(job_records(3))
    sink = LoopbackSink(broker)
    policy = RetryPolicy(max_attempts=2, backoff_s=60, max_backoff_s=60)  # the retry will not be due for a minute
    pipeline = make_pipeline(broker, sink, FlakyRuntime({"job-0"}, times=1), policy=policy)
    started = time.monotonic()
    await run_until(pipeline, lambda: len(results(sink)) == 2 and broker.log[broker.retry_tp]
                    and broker.offsets[broker.retry_tp] == 1)
    assert time.monotonic() - started < 5
    committed = {tp.topic: offset for commit in broker.commits for tp, offset in commit.items()}
    assert committed.get(TOPICS.retry, 0) == 0  # the waiting retry stays uncommitted: it comes back after a restart


async def test_one_poisonous_job_fails_alone_and_its_batch_mates_keep_their_attempts():
    broker = Broker(job_records(6))
    sink = LoopbackSink(broker)
    runtime = FlakyRuntime({"job-3"}, times=99)
    pipeline = make_pipeline(broker, sink, runtime, policy=RetryPolicy(max_attempts=2, backoff_s=0.01), max_batch=6)
    await run_until(pipeline, lambda: len(results(sink)) == 6)
    statuses = {r.job_id: r.status for r in results(sink)}
    assert statuses == {**{f"job-{i}": "ok" for i in range(6)}, "job-3": "error"}
    assert [k for _, _, k, _ in sink.on(TOPICS.retry)] == [b"job-3"]  # only the poisonous job was retried


async def test_an_outcome_the_broker_refuses_for_good_ends_as_a_bare_dead_letter_without_a_rewind():
    from aiokafka.errors import MessageSizeTooLargeError

    class RefusingSink(LoopbackSink):
        """Refuses anything keyed `job-1` (as a broker refuses a record over its size limit)."""

        async def send(self, topic, value, *, key, headers):
            if key == b"job-1":
                raise MessageSizeTooLargeError()
            await super().send(topic, value, key=key, headers=headers)

    broker = Broker(job_records(4))
    sink = RefusingSink(broker)
    pipeline = make_pipeline(broker, sink, SumRuntime(), max_batch=4)
    stats = await run_until(pipeline, lambda: {r.job_id for r in results(sink)} == {"job-0", "job-2", "job-3"}
                            and sink.on(DLQ))
    ((_, value, key, headers),) = sink.on(DLQ)
    assert key is None and value == b"" and headers["aiaas.error.type"] == b"Undeliverable"
    assert headers["aiaas.origin.offset"] == b"1" and b"MessageSizeTooLarge" in headers["aiaas.error.message"]
    assert stats.rewinds == 0  # dead-lettered at once: the partition was never rewound for it
    assert broker.last_commits() == {0: 4}


async def test_a_broker_outage_is_not_mistaken_for_a_refusal():
    from aiokafka.errors import KafkaTimeoutError

    class OutageSink(LoopbackSink):
        failures = 3

        async def send(self, topic, value, *, key, headers):
            if self.failures:
                self.failures -= 1
                raise KafkaTimeoutError()
            await super().send(topic, value, key=key, headers=headers)

    broker = Broker(job_records(4))
    sink = OutageSink(broker)
    await run_until(make_pipeline(broker, sink, SumRuntime(), max_batch=4),
                    lambda: {r.job_id for r in results(sink)} == {f"job-{i}" for i in range(4)})
    assert sink.on(DLQ) == [] and all(r.status == "ok" for r in results(sink))


async def test_retries_waiting_out_their_backoff_are_dropped_when_their_partition_is_revoked():
    broker = Broker(job_records(6))
    sink = LoopbackSink(broker)
    runtime = FlakyRuntime({"job-1"}, times=99)
    policy = RetryPolicy(max_attempts=2, backoff_s=1.0, max_backoff_s=1.0)
    pipeline = make_pipeline(broker, sink, runtime, policy=policy)
    task = asyncio.create_task(pipeline.run())
    async with asyncio.timeout(10):
        while len(results(sink)) < 5 or not broker.offsets[broker.retry_tp]:
            await asyncio.sleep(0.01)  # five answers, and the retry record taken: it now waits in the window
    listener = pipeline.rebalance_listener
    started = time.monotonic()
    await listener.on_partitions_revoked({broker.retry_tp})
    assert time.monotonic() - started < 0.5  # the waiting retry did not hold the rebalance up
    # The partition comes back (to this member, as the next rebalance may decide): it reads from the committed offset.
    await listener.on_partitions_assigned({broker.retry_tp})
    await broker.seek_to_committed(broker.retry_tp)
    async with asyncio.timeout(10):
        while not sink.on(DLQ):
            await asyncio.sleep(0.01)
    await asyncio.sleep(1.5)  # time for a second copy to run, if one were still queued
    pipeline.stop()
    await asyncio.wait_for(task, 10)
    assert runtime.failures["job-1"] == 2  # the first attempt and the one retry: never run twice
    assert len(sink.on(DLQ)) == 1
    committed = {tp.topic: offset for commit in broker.commits for tp, offset in commit.items()}
    assert committed == {TOPICS.infer: 6, TOPICS.retry: 1}  # and the retry partition committed past it


async def test_a_new_assignment_pauses_the_retry_topic_again_while_waiting_retries_fill_half_the_window():
    broker = Broker([])
    policy = RetryPolicy(max_attempts=2, backoff_s=60, max_backoff_s=60)
    pipeline = make_pipeline(broker, RecordingSink(), SumRuntime(), policy=policy)  # a window of 16
    waiting = [Record(TOPICS.retry, 0, offset, b"k", b"v",
                      policy.retry_headers(Origin(TOPICS.infer, 0, offset), ModelFailure("x"), 1, now=time.time()))
               for offset in range(8)]
    pipeline._queue.extend(waiting)  # noqa: SLF001 - eight retries waiting out a minute's backoff
    pipeline._hold_back_retries()  # noqa: SLF001
    assert broker.retry_tp in broker.paused
    broker.paused.clear()  # a rebalance gave the partition back to this member: a new assignment starts unpaused
    await pipeline.rebalance_listener.on_partitions_assigned({broker.retry_tp})
    pipeline._hold_back_retries()  # noqa: SLF001
    assert broker.retry_tp in broker.paused
