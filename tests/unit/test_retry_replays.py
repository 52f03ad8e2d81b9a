"""A retry record delivered again after its job was answered publishes nothing; a client's repeat still gets its answer.

A retry-topic partition commits its offsets only as a contiguous prefix, so a retry record that has run can come
again when the partition moves (and beside the next attempt the first run wrote). Those must not answer the job twice.
"""

import asyncio

from aiaas.contract.codec import decode_result
from aiaas.contract.dead_letters import Origin
from aiaas.errors import ModelFailure
from aiaas.serving.idempotency import Outcome, OutcomeCache
from aiaas.serving.retries import RetryPolicy
from aiaas.serving.worker import BatchWorker
from tests.fakes import RecordingSink, SumRuntime, job_record
from tests.unit.test_pipeline import TOPICS


def _worker(sink, outcomes):
    return BatchWorker(SumRuntime(), sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                       max_message_bytes=1 << 20, retry=RetryPolicy(max_attempts=5), outcomes=outcomes)


def _retry_record(offset: int, job_offset: int, attempt: int):
    record = job_record(job_offset, [1.0, 2.0], topic=TOPICS.retry)
    record.offset = offset
    policy = RetryPolicy(max_attempts=5)
    record.headers = policy.retry_headers(Origin(TOPICS.infer, 0, job_offset), ModelFailure("flaky"), attempt - 1,
                                          now=0.0)
    return record


def _handle(worker, records):
    try:
        asyncio.run(worker.handle(records))
    finally:
        worker.close()


def _results(sink):
    return [decode_result(v, 1 << 20).job_id for t, v, _, _ in sink.sent if t == TOPICS.results]


def test_a_retry_record_of_a_job_answered_and_delivered_publishes_nothing():
    first, again = RecordingSink(), RecordingSink()
    outcomes = OutcomeCache(64)
    worker = _worker(first, outcomes)
    batch = asyncio.run(worker.run([job_record(3, [1.0])]))
    asyncio.run(worker.publish(batch))
    worker.delivered(batch)
    worker.close()
    _handle(_worker(again, outcomes), [_retry_record(40, 3, attempt=2)])  # the same memory, a fresh view of sends
    assert first.sent and again.sent == []


def test_a_client_repeat_of_an_answered_job_still_gets_its_answer():
    sink, outcomes = RecordingSink(), OutcomeCache(64)
    outcomes.put("job-3", Outcome(TOPICS.results, b"remembered", delivered=True))
    _handle(_worker(sink, outcomes), [job_record(3, [1.0])])
    assert [(t, v) for t, v, _, _ in sink.sent] == [(TOPICS.results, b"remembered")]


def test_two_attempts_of_one_job_in_one_batch_answer_it_once():
    sink = RecordingSink()
    _handle(_worker(sink, OutcomeCache(64)), [_retry_record(162, 7, attempt=2), _retry_record(191, 7, attempt=3)])
    assert _results(sink) == ["job-7"] and sink.on(TOPICS.retry) == []


def test_the_outcome_memory_confirms_only_the_outcome_it_still_holds():
    outcomes = OutcomeCache(64)
    old, new = Outcome("t", b"old"), Outcome("t", b"new")
    outcomes.put("j", old)
    outcomes.put("j", new)
    outcomes.confirm("j", old)
    assert outcomes.get("j") is new and not new.delivered
    outcomes.confirm("j", new)
    assert outcomes.get("j").delivered and outcomes.memory_bytes > 0


def test_a_retry_record_beside_an_attempt_still_in_flight_publishes_nothing():
    # Attempt 2 (@162) was answered in a batch that is still publishing when attempt 3 (@191) is cut: if that
    # publish fails, @162 runs again and sends the answer; if it succeeds the answer is there. @191 sends nothing.
    sink, outcomes = RecordingSink(), OutcomeCache(64)
    outcomes.put("job-7", Outcome(TOPICS.results, b"answered", source=(TOPICS.retry, 0, 162)))
    _handle(_worker(sink, outcomes), [_retry_record(191, 7, attempt=3)])
    assert sink.sent == []


def test_the_record_that_computed_an_answer_not_yet_delivered_sends_it_when_it_runs_again():
    sink, outcomes = RecordingSink(), OutcomeCache(64)
    outcomes.put("job-7", Outcome(TOPICS.results, b"answered", source=(TOPICS.retry, 0, 162)))
    _handle(_worker(sink, outcomes), [_retry_record(162, 7, attempt=2)])
    assert [(t, v) for t, v, _, _ in sink.sent] == [(TOPICS.results, b"answered")]


def test_a_retry_records_own_answer_sent_again_is_confirmed_once_delivered():
    # Its first publish failed and it ran again: it sends its own answer; once that is delivered, a third delivery of
    # the same record sends nothing.
    sink, outcomes = RecordingSink(), OutcomeCache(64)
    outcomes.put("job-7", Outcome(TOPICS.results, b"answered", source=(TOPICS.retry, 0, 162)))
    worker = _worker(sink, outcomes)
    batch = asyncio.run(worker.run([_retry_record(162, 7, attempt=2)]))
    asyncio.run(worker.publish(batch))
    worker.delivered(batch)
    worker.close()
    again = RecordingSink()
    _handle(_worker(again, outcomes), [_retry_record(162, 7, attempt=2)])
    assert [(t, v) for t, v, _, _ in sink.sent] == [(TOPICS.results, b"answered")] and again.sent == []
