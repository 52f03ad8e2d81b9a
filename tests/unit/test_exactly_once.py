"""Exactly-once: a transaction whose commit fails is aborted, and no two replicas on a host share a transactional id."""

import os
import signal
import subprocess
import sys

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, ProducerFenced

from aiaas.contract.codec import decode_result
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.transactions import (
    TransactionalIdInUse,
    TransactionFenced,
    Transactions,
    claim_transactional_id,
    transactional_id,
)
from aiaas.serving.pipeline import JobPipeline
from aiaas.serving.worker import BatchWorker
from tests.fakes import FakeConsumer, SumRuntime, job_record
from tests.unit.test_pipeline import run_until

TOPICS = ModelTopics.of("vision", "p")


class FakeTransactionalProducer:
    """A transactional producer whose records become visible when their transaction commits.

    Commits fail (before anything is visible) with `commit_error` for the transactions numbered in `fail_commits`;
    like aiokafka's, it refuses to begin a transaction while another is still open.
    """

    def __init__(self, *, fail_commits=(), commit_error=KafkaTimeoutError, abort_error=None) -> None:
        self.fail_commits, self.commit_error, self.abort_error = set(fail_commits), commit_error, abort_error
        self.open: list | None = None
        self.visible: list = []
        self.offsets: dict = {}
        self.transactions = self.aborts = 0

    async def begin_transaction(self):
        if self.open is not None:
            raise AssertionError("Invalid state transition: a transaction is still open")
        self.open, self.pending_offsets = [], {}
        self.transactions += 1

    async def send(self, topic, value, *, key, headers):
        assert self.open is not None, "a send outside a transaction"
        self.open.append((topic, value, key))

    async def send_offsets_to_transaction(self, offsets, group_id):
        self.pending_offsets.update(offsets)

    async def commit_transaction(self):
        if self.transactions in self.fail_commits:
            raise self.commit_error()  # still open: only an abort ends it now
        self.visible += self.open
        self.offsets.update(self.pending_offsets)
        self.open = None

    async def abort_transaction(self):
        if self.abort_error is not None:
            raise self.abort_error()
        self.aborts += 1
        self.open = None

    def results(self) -> list[str]:
        return [decode_result(value, 1 << 20).job_id for topic, value, _ in self.visible if topic == TOPICS.results]


async def test_a_commit_that_fails_aborts_the_transaction_and_the_next_one_begins():
    producer = FakeTransactionalProducer(fail_commits={1})
    transactions = Transactions(producer, "p.vision")
    with pytest.raises(KafkaTimeoutError):
        async with transactions.batch():
            await producer.send(TOPICS.results, b"r", key=b"k", headers=[])
    assert producer.aborts == 1 and producer.open is None and producer.visible == []
    async with transactions.batch() as transaction:  # would raise had the failed one been left open
        await producer.send(TOPICS.results, b"r", key=b"k", headers=[])
        await transaction.commit_offsets({("p.vision.infer", 0): 1})
    assert producer.visible == [(TOPICS.results, b"r", b"k")]
    assert producer.offsets == {TopicPartition("p.vision.infer", 0): 1}


async def test_a_commit_that_fails_and_cannot_be_aborted_stops_the_service():
    producer = FakeTransactionalProducer(fail_commits={1}, abort_error=KafkaTimeoutError)
    with pytest.raises(TransactionFenced):
        async with Transactions(producer, "p.vision").batch():
            pass


async def test_a_fenced_commit_is_not_aborted():
    producer = FakeTransactionalProducer(fail_commits={1}, commit_error=ProducerFenced)
    with pytest.raises(TransactionFenced):
        async with Transactions(producer, "p.vision").batch():
            pass
    assert producer.aborts == 0  # a fenced producer can do nothing more; the replica that took over aborts it


async def test_after_a_failed_commit_the_pipeline_runs_the_batch_again_and_every_job_has_one_result():
    producer = FakeTransactionalProducer(fail_commits={2, 3})
    consumer = FakeConsumer({0: [job_record(i, [float(i)]) for i in range(20)]})
    worker = BatchWorker(SumRuntime(), producer, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, consumer, max_batch=4, max_wait_ms=1, max_in_flight=16, drain_timeout_s=10,
                           transactions=Transactions(producer, "p.vision"))
    stats = await run_until(pipeline, lambda: len(producer.results()) == 20)
    assert sorted(producer.results()) == sorted(f"job-{i}" for i in range(20))  # each once: aborted ones never show
    assert producer.aborts >= 2 and stats.aborted_transactions >= 2 and stats.rewinds >= 1
    assert producer.offsets == {TopicPartition("p.vision.infer", 0): 20} and consumer.commits == []


def test_the_default_instance_id_is_numbered_among_the_replicas_of_one_host():
    with claim_transactional_id("g", "host", cluster="c1", numbered=True) as first, \
            claim_transactional_id("g", "host", cluster="c1", numbered=True) as second:
        assert (first.id, second.id) == ("g.host", "g.host.1")
        with claim_transactional_id("g", "host", cluster="c2", numbered=True) as elsewhere:
            assert elsewhere.id == "g.host"  # another cluster: no conflict
    with claim_transactional_id("g", "host", cluster="c1", numbered=True) as again:
        assert again.id == "g.host"  # the lowest free number: a restart takes the place a dead replica left
    assert transactional_id("g", "host", 2) == "g.host.2"


def test_an_instance_id_set_by_the_operator_is_refused_while_another_live_process_holds_it():
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom aiaas.kafka.transactions import claim_transactional_id\n"
         "claim = claim_transactional_id('g', 'w1', cluster='c', numbered=False)\nprint(claim.id, flush=True)\n"
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "g.w1"
        with pytest.raises(TransactionalIdInUse, match="AIAAS_<MODEL>_INSTANCE_ID"):
            claim_transactional_id("g", "w1", cluster="c", numbered=False)
        with claim_transactional_id("g", "w1", cluster="c", numbered=True) as numbered:
            assert numbered.id == "g.w1.1"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    with claim_transactional_id("g", "w1", cluster="c", numbered=False) as claim:  # kill -9 released it
        assert claim.id == "g.w1"


def test_without_abstract_sockets_a_lock_file_in_the_temp_folder_does_the_same(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with claim_transactional_id("g", "h", cluster="c", numbered=True) as first:
        with claim_transactional_id("g", "h", cluster="c", numbered=True) as second:
            assert (first.id, second.id) == ("g.h", "g.h.1")
        with pytest.raises(TransactionalIdInUse):
            claim_transactional_id("g", "h", cluster="c", numbered=False)
    assert list(tmp_path.glob("aiaas-txn-*.lock"))
    with claim_transactional_id("g", "h", cluster="c", numbered=False) as claim:
        assert claim.id == "g.h"
