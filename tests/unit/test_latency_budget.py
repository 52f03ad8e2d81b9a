"""The latency budget: batch times learnt from calls, and the size of the next cut."""

import asyncio
import statistics
import time

import pytest

from aiaas.serving.latency_budget import BatchTimes, LatencyBudget
from aiaas.serving.pipeline import JobPipeline
from aiaas.serving.worker import BatchWorker
from tests.fakes import FakeConsumer, RecordingSink, SumRuntime
from tests.unit.test_pipeline import TOPICS, answered, partition_log, run_until


def learnt(calls: list[tuple[int, float]], memory: int = 64) -> BatchTimes:
    times = BatchTimes(memory)
    for jobs, seconds in calls:
        times.observe(jobs, seconds)
    return times


def test_the_line_of_a_models_calls_is_recovered_from_calls_of_several_sizes():
    times = learnt([(n, 0.004 + 0.003 * n) for n in (1, 8, 3, 32, 16, 5, 2, 30)])
    fixed, per_job = times.line()
    assert fixed == pytest.approx(0.004) and per_job == pytest.approx(0.003)


def test_nothing_is_predicted_before_a_few_calls_and_bad_observations_are_ignored():
    times = learnt([(4, 0.01), (0, 1.0), (4, float("nan")), (4, -1.0), (8, 0.02)])
    assert times.calls == 2 and times.line() is None
    with pytest.raises(ValueError):
        BatchTimes(memory=0)


def test_calls_of_one_size_give_a_time_per_job_and_no_fixed_part():
    assert learnt([(32, 0.096)] * 5).line() == (0.0, pytest.approx(0.003))


def test_a_model_that_slows_down_is_followed_by_the_recent_calls():
    times = learnt([(n, 0.001 * n) for n in (4, 8, 16, 32) * 20] + [(n, 0.004 * n) for n in (4, 8, 16, 32) * 8],
                   memory=16)
    assert times.line()[1] == pytest.approx(0.004, rel=0.1)


def test_a_fit_whose_fixed_part_would_be_negative_falls_back_to_a_time_per_job():
    fixed, per_job = learnt([(1, 0.0001), (2, 0.0002), (30, 0.2), (31, 0.21)]).line()
    assert fixed == 0.0 and per_job > 0


def budget_of(budget_ms, calls, max_batch=32):
    return LatencyBudget(budget_ms / 1000, max_batch, times=learnt(calls))


CALLS = [(n, 0.002 + 0.003 * n) for n in (1, 4, 8, 16, 32)]  # 2 ms a call, 3 ms a job


def test_batches_are_capped_so_a_call_takes_at_most_half_the_budget():
    assert budget_of(60, CALLS).most_jobs(0.0) == 9  # 2 + 3 × 9 = 29 ms ≤ 30
    assert budget_of(60, CALLS).most_jobs(0.03) == 9  # the oldest is answered at 30 + 29 ms, within 60


def test_once_the_oldest_job_cannot_make_the_budget_the_cut_goes_back_to_max_batch():
    assert budget_of(60, CALLS).most_jobs(0.032) == 32  # 32 + 29 > 60: late anyway, throughput first


def test_until_the_line_is_learnt_and_when_not_even_one_job_fits_half_the_budget_batches_go_up_to_max_batch():
    assert budget_of(60, CALLS[:2]).most_jobs(0.0) == 32  # not learnt yet
    assert budget_of(8, CALLS).most_jobs(0.0) == 32  # one job's call takes 5 ms: no cap, rather than batches of 1
    slow_start = [(n, 0.030 + 0.001 * n) for n in (1, 4, 8, 16, 32)]
    assert budget_of(50, slow_start).most_jobs(0.0) == 32


class TimedRuntime(SumRuntime):
    """A model whose call takes 2 ms plus 4 ms per job (on a model thread)."""

    def infer(self, items):
        time.sleep(0.002 + 0.004 * len(items))
        return super().infer(items)


@pytest.mark.parametrize("latency_budget_ms", [None, 52])
async def test_under_a_budget_bursts_are_cut_into_batches_whose_calls_fit_half_of_it(latency_budget_ms):
    """Bursts of 8 jobs every 150 ms: without a budget a burst is one batch; with 52 ms, batches of at most 6
    (2 + 4 × 6 = 26 ms; the line also counts the worker's own time per batch), and every job is still answered."""
    consumer, sink, runtime = FakeConsumer({0: []}), RecordingSink(), TimedRuntime()
    worker = BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20, model_calls="thread")
    pipeline = JobPipeline(worker, consumer, max_batch=32, max_wait_ms=1, max_in_flight=64,
                           latency_budget_ms=latency_budget_ms, drain_timeout_s=10)
    records, (log,) = partition_log(0, 160), consumer.log.values()

    async def bursts():
        for start in range(0, len(records), 8):
            log.extend(records[start:start + 8])
            await asyncio.sleep(0.15)

    feeding = asyncio.create_task(bursts())
    await run_until(pipeline, lambda: len(answered(sink)) == 160, timeout=30)
    await feeding
    sizes = [len(batch) for batch in runtime.batches]
    typical = statistics.median(sizes[len(sizes) // 2:])  # once the calls' line is learnt
    if latency_budget_ms is None:
        assert typical >= 8
    else:  # (a burst taken late counts as lost: it goes whole)
        assert typical <= 6 and len(sizes) >= 30


def budgeted_pipeline(max_in_flight=64):
    """A pipeline whose budget of 52 ms has learnt calls of 2 ms + 4 ms per job: a cap of 6 jobs."""
    worker = BatchWorker(SumRuntime(), RecordingSink(), topics=TOPICS, dlq_topic="p.dlq", group="p.vision",
                         max_message_bytes=1 << 20)
    pipeline = JobPipeline(worker, FakeConsumer({0: []}), max_batch=32, max_wait_ms=1, max_in_flight=max_in_flight,
                           latency_budget_ms=52, drain_timeout_s=10)
    for jobs in (1, 4, 8, 16, 32):
        pipeline._budget.observe(jobs, 0.002 + 0.004 * jobs)  # noqa: SLF001
    return pipeline


def queued(pipeline, n, waited_s):
    records = partition_log(0, n)
    for record in records:
        record.taken_ns = time.time_ns() - int(waited_s * 1e9)
    pipeline._window.take(records)  # noqa: SLF001 - as the fetch loop takes them
    pipeline._queue.extend(records)  # noqa: SLF001
    return pipeline


def next_cut(pipeline):
    """The batch the model loop would cut now (as `_next_batch` does, without the wait to grow)."""
    return pipeline._cut(pipeline._most_jobs())  # noqa: SLF001


def test_the_cut_is_capped_while_the_oldest_job_can_make_the_budget_and_not_once_it_cannot():
    assert len(next_cut(queued(budgeted_pipeline(), 20, waited_s=0.0))) == 6
    assert len(next_cut(queued(budgeted_pipeline(), 20, waited_s=0.03))) == 20  # 30 + 26 > 52 ms


def test_while_the_window_is_full_the_budget_caps_no_batch():
    """Jobs then wait in Kafka, where the budget cannot see their wait: capping their batches would only slow the
    service down."""
    assert len(next_cut(queued(budgeted_pipeline(max_in_flight=32), 32, waited_s=0.0))) == 32
