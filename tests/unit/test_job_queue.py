"""The queue a batch is cut from: retries wait for their time without holding back what is behind them, and with
several tenants in flight a batch takes from each in turn."""

import pytest

from aiaas.kafka.commit_window import Partition
from aiaas.serving.job_queue import OLDEST_SHARE, JobQueue
from tests.fakes import Record


def rec(topic: str, offset: int, due: float | None = None) -> Record:
    record = Record(topic, 0, offset, None, b"")
    record.due = due
    return record


def make(now: float = 100.0) -> JobQueue:
    return JobQueue(due_at=lambda r: r.due, delayed_topic="retry", owner_of=lambda topic: topic.split(".")[-1],
                    clock=lambda: now)


def test_a_waiting_retry_stays_queued_and_the_records_behind_it_are_cut():
    queue = make()
    queue.extend([rec("retry", 0, due=130.0), rec("infer", 0), rec("infer", 1)])
    assert queue.waiting() == 1 and queue.until_next_due() == 30.0
    assert [r.offset for r in queue.cut(8, in_turns=False)] == [0, 1]
    assert len(queue) == 1 and not queue.any_ready()


def test_in_turns_a_batch_takes_from_each_tenant_in_turn():
    queue = make()
    queue.extend([rec("infer.alice", i) for i in range(6)] + [rec("infer.bob", 10), rec("infer.bob", 11)])
    batch = queue.cut(4, in_turns=True)
    assert [(r.topic, r.offset) for r in batch] == [("infer.alice", 0), ("infer.bob", 10), ("infer.alice", 1),
                                                   ("infer.bob", 11)]
    assert [r.offset for r in queue] == [2, 3, 4, 5]


def test_forgotten_partitions_leave_the_queue():
    queue = make()
    queue.extend([rec("infer", 0), rec("retry", 0, due=90.0)])
    queue.forget({Partition("infer", 0)})
    assert [r.topic for r in queue] == ["retry"]
    queue.forget()
    assert len(queue) == 0


def test_a_retry_is_cut_once_its_time_has_come_in_either_order():
    now = [100.0]
    for in_turns in (False, True):
        queue = JobQueue(due_at=lambda r: r.due, delayed_topic="retry", owner_of=lambda topic: topic,
                         clock=lambda: now[0])
        now[0] = 100.0
        queue.extend([rec("retry", 0, due=130.0), rec("retry", 1)])  # the second has no time: it may run at once
        assert [r.offset for r in queue.cut(8, in_turns=in_turns)] == [1] and queue.waiting() == 1
        now[0] = 130.0
        assert queue.any_ready() and queue.waiting() == 0 and queue.until_next_due() == 0.001
        assert [r.offset for r in queue.cut(8, in_turns=in_turns)] == [0]
        assert len(queue) == 0 and queue.until_next_due() is None


def ranked(topic: str, offset: int, rank: int) -> Record:
    record = rec(topic, offset)
    record.rank = rank
    return record


def make_ranked() -> JobQueue:
    return JobQueue(owner_of=lambda topic: topic.split(".")[-1], rank_of=lambda r: getattr(r, "rank", 0),
                    clock=lambda: 100.0)


def test_the_highest_ranked_records_are_cut_first_and_a_quarter_of_the_batch_goes_to_the_oldest():
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(20)] + [ranked("infer-urgent", 100 + i, 1000) for i in range(10)])
    batch = [r.offset for r in queue.cut(8, in_turns=False)]
    # Two places of eight for the oldest, the other six for the urgent records (in their queue order).
    assert batch == [0, 1, 100, 101, 102, 103, 104, 105]
    assert [r.offset for r in queue][:3] == [2, 3, 4] and len(queue) == 22


def test_without_ranked_records_a_cut_is_in_queue_order():
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(10)])
    assert [r.offset for r in queue.cut(4, in_turns=False)] == [0, 1, 2, 3]


def test_ranks_order_each_tenants_own_records_but_tenants_still_take_turns():
    queue = make_ranked()
    queue.extend([rec("infer.alice", i) for i in range(8)] + [ranked("infer.alice", 50, 5)]
                 + [rec("infer.bob", 10 + i) for i in range(8)])
    batch = [(r.topic, r.offset) for r in queue.cut(8, in_turns=True)]
    # Four places each: one for each tenant's oldest, then alice's priority 5 record ahead of her others (the tenant
    # that goes first moves on with each ranked cut: bob's turn here).
    assert batch == [("infer.bob", 10), ("infer.alice", 0), ("infer.bob", 11), ("infer.alice", 50),
                     ("infer.bob", 12), ("infer.alice", 1), ("infer.bob", 13), ("infer.alice", 2)]


@pytest.mark.parametrize(("tenants", "max_batch"), [(2, 1), (2, 5), (4, 8)])
def test_with_fewer_places_than_a_quarter_per_tenant_every_tenants_records_still_move(tenants, max_batch):
    # Each tenant's first job has a low priority: ranked cuts leave it queued, and it must not keep its tenant first in
    # line (nor be left behind for ever).
    queue = make_ranked()
    names = [f"t{i}" for i in range(tenants)]
    queue.extend([ranked(f"infer.{name}", 0, -1) for name in names]
                 + [rec(f"infer.{name}", offset) for offset in range(1, 40) for name in names])
    cut: list[Record] = []
    for _ in range(8 * tenants // max_batch + 8):
        cut += queue.cut(max_batch, in_turns=True)
    assert {r.topic for r in cut} == {f"infer.{name}" for name in names}
    assert all(any(r.topic == f"infer.{name}" and r.offset == 0 for r in cut) for name in names)


def test_batches_of_one_are_oldest_first_once_in_four_cuts_so_low_priority_never_starves():
    queue = make_ranked()
    queue.extend([rec("infer", 0)] + [ranked("infer-urgent", 100 + i, 1000) for i in range(10)])
    cuts = [queue.cut(1, in_turns=False)[0].offset for _ in range(4)]
    assert cuts == [100, 101, 102, 0]


def test_forgetting_and_cutting_leave_no_rank_behind():
    queue = make_ranked()
    queue.extend([ranked("infer-urgent", 0, 1000), rec("infer", 0)])
    queue.forget({Partition("infer-urgent", 0)})
    assert [r.offset for r in queue.cut(4, in_turns=False)] == [0]
    queue.extend([rec("infer", 1), rec("infer", 2)])
    assert [r.offset for r in queue.cut(1, in_turns=False)] == [1]  # no stale rank reorders the rest


def test_a_light_tenants_job_beside_a_backlog_rides_in_a_short_batch_and_the_backlog_then_in_full_ones():
    queue = make()
    queue.extend([rec("infer.alice", i) for i in range(200)] + [rec("infer.bob", 1000)])
    batch = queue.cut(64, in_turns=True)
    assert len(batch) == 1 + 64 // 4 and ("infer.bob", 1000) in [(r.topic, r.offset) for r in batch]
    assert len(queue.cut(64, in_turns=True)) == 64  # bob has nothing queued: alice's backlog in full batches


def test_two_backlogs_share_full_batches():
    queue = make()
    queue.extend([rec("infer.alice", i) for i in range(200)] + [rec("infer.bob", 1000 + i) for i in range(40)])
    batch = queue.cut(64, in_turns=True)
    assert len(batch) == 64 and sum(r.topic == "infer.bob" for r in batch) == 32  # in turns, as before


def test_an_urgent_job_beside_a_backlog_rides_in_a_short_batch():
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(200)] + [ranked("infer-urgent", 1000, 1000)])
    batch = [r.offset for r in queue.cut(64, in_turns=False)]
    assert len(batch) == 1 + 64 // 4 and 1000 in batch
    assert len(queue.cut(64, in_turns=False)) == 64


def test_a_queue_of_one_rank_is_cut_in_full_batches():
    queue = make_ranked()
    queue.extend([ranked("infer", i, -5) for i in range(200)])
    assert len(queue.cut(64, in_turns=False)) == 64


def test_in_turns_with_one_tenants_records_queued_an_urgent_job_still_rides_in_a_short_batch():
    queue = make_ranked()
    queue.extend([rec("infer.alice", i) for i in range(200)] + [ranked("infer-urgent.alice", 1000, 1000)])
    batch = [r.offset for r in queue.cut(64, in_turns=True)]
    assert len(batch) == 1 + 64 // 4 and 1000 in batch


def test_without_a_backlog_behind_it_a_cut_is_not_short():
    queue = make()
    queue.extend([rec("infer.alice", i) for i in range(20)] + [rec("infer.bob", 1000)])
    assert len(queue.cut(64, in_turns=True)) == 21  # one batch takes them all
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(70)] + [ranked("infer-urgent", 1000, 1000)])
    assert len(queue.cut(64, in_turns=False)) == 64  # a short cut would leave less than a batch behind it


def test_a_cut_is_never_short_twice_in_a_row():
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(500)])
    sizes = []
    for i in range(4):
        queue.extend([ranked("infer-urgent", 1000 + i, 1000)])
        batch = queue.cut(64, in_turns=False)
        assert 1000 + i in [r.offset for r in batch]
        sizes.append(len(batch))
    assert sizes == [17, 64, 17, 64]


def test_a_low_priority_job_in_the_backlog_does_not_make_the_backlog_favoured():
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(200)] + [ranked("infer", 500, -1)]
                 + [ranked("infer-urgent", 1000, 1000)])
    batch = [r.offset for r in queue.cut(64, in_turns=False)]
    assert len(batch) == 17 and 1000 in batch


@pytest.mark.parametrize("max_batch", [1, 2, 3, 4, 5, 7, 8, 12])
def test_small_batches_are_never_cut_below_four_and_keep_the_urgent_job(max_batch):
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(200)])
    sizes = []
    for i in range(OLDEST_SHARE * 2):  # the oldest-first cuts too
        queue.extend([ranked("infer-urgent", 1000 + i, 1000)])
        batch = queue.cut(max_batch, in_turns=False)
        sizes.append(len(batch))
        if max_batch >= OLDEST_SHARE:
            assert 1000 + i in [r.offset for r in batch]
    # One urgent job and a quarter of the batch, at least four places, and only when that is at most half a batch.
    short = OLDEST_SHARE if OLDEST_SHARE <= max_batch // 2 else max_batch
    assert sizes == [short, max_batch] * OLDEST_SHARE


def test_due_retries_beside_one_tenants_backlog_are_no_light_tenant():
    queue = make()
    queue.extend([rec("infer.alice", i) for i in range(200)] + [rec("retry", 1000 + i) for i in range(3)])
    assert len(queue.cut(64, in_turns=True)) == 64


def test_with_retries_queued_an_urgent_job_still_rides_in_a_short_batch():
    queue = JobQueue(delayed_topic="retry", owner_of=lambda topic: topic.split(".")[-1],
                     rank_of=lambda r: getattr(r, "rank", 0), clock=lambda: 100.0)
    queue.extend([rec("infer.alice", i) for i in range(200)] + [rec("retry", 500)]
                 + [ranked("infer-urgent.alice", 1000, 1000)])
    batch = [r.offset for r in queue.cut(64, in_turns=True)]
    assert len(batch) == 1 + 64 // 4 and 1000 in batch


def test_a_nearly_full_short_cut_is_a_full_one():
    queue = make_ranked()
    queue.extend([rec("infer", i) for i in range(300)] + [ranked("infer-urgent", 1000 + i, 1000) for i in range(20)])
    assert len(queue.cut(64, in_turns=False)) == 64  # 20 urgent and 20 others would be 40: more than half a batch
