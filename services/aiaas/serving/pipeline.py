"""The consume → batch → infer → publish → commit pipeline of one service instance.

Three things run at once so the model is never idle waiting for Kafka:

* the **fetch loop** polls the consumer and queues records, and pauses every assigned
  partition while `max_in_flight` records are in flight (Kafka's own back-pressure: the
  fetcher stops prefetching, memory stays bounded, the group membership stays alive); while
  every model instance has a batch, the consumer's fetches wait at the broker for about a
  batch of jobs (up to `busy_fetch_wait_ms`, no longer than a batch takes) rather than coming
  back with the first one (`FetchPacing`): fewer, fuller fetches at partial load, for jobs that
  would wait anyway (with model threads, and while jobs run in the order they came);
* the **model loop** cuts a batch from the queue as soon as the model is free — up to
  `max_batch` records (fewer under a latency budget, `LatencyBudget`), waiting at most
  `max_wait_ms` for a batch to grow, never for it to fill — and runs it (`BatchWorker.run`);
  with `model_instances` > 1 that many model loops run, each with a batch in the model at
  once, and their batches are published in the order they were cut, so results of one key
  keep their order;
* a **publish task** per batch sends its results and dead letters (`BatchWorker.publish`)
  while the next batch is in the model, then commits the offsets that are now safe. (A small
  model's calls may run on the event loop itself, `model_calls`: the publish task and the
  fetch loop then go on between the batches, the producer's sends in the background.)
  Between two such batches a model loop leaves the event loop to every other task that is
  ready, until none is (`_let_ready_tasks_run`): a job's way in and out is a chain of short
  steps, and none of them waits a whole batch for its turn.

At-least-once (the default): an offset is committed only after every record before it on
its partition has had its outcome acknowledged (`InFlightWindow`). Exactly-once (with a
`Transactions` object): each batch's results, dead letters, retries and the offsets it makes
safe are written in one Kafka transaction, one batch after another. Either way, if
publishing fails the partitions are rewound to the first unfinished record and those jobs
run again. When partitions are revoked (a rebalance) or SIGTERM arrives, in-flight work is
drained and committed first, within `graceful_timeout_s` (after SIGTERM, plus up to `_STOP_FETCH_S` for a fetch
loop still inside a Kafka call). When the process stood still past its
group session (`stall_after_s`: frozen, paused, its loop blocked), the group may have given its
partitions away: what it holds is dropped uncommitted, nothing of it is published, and it rejoins
the group before it takes records again (`LoopStallWatch`; the partitions' new owner runs them). The same when a
revocation comes after the group already dropped us (its generation reset).

Urgent lanes (`contract/priority.py`): whenever the window has room, the fetch loop takes the urgent topics'
records before any other, and the queue cuts the highest-ranked jobs first (`JobQueue`); urgent records may hold at
most three quarters of the window, so a flood of them leaves the infer topics a share. Under back-pressure the
urgent partitions go on fetching while the others pause, and their records are taken as they come while fewer
than a batch of them are in flight (up to a batch past the window). While paused, the loop polls only the urgent
partitions: aiokafka drops what it prefetched of a paused partition that a poll names, and the infer partitions
would then wait, once resumed, for the urgent lanes' long-polling fetch to come back before theirs could be sent
(bench/results: the A/B of 2026-12-06 halved the saturated throughput that way). Where no partition may be polled
for records (no urgent one is ours, they are at their cap, or a drain holds every partition back), it polls only as
often as staying in the group needs (`_KEEP_IN_GROUP_S`). Ranks reorder jobs of one partition: results of one key
keep their order among jobs of equal rank.

Records from the retry topic carry the time before which they may not run; the model loop
leaves them queued until then and takes the jobs behind them, so a retry never blocks its
partition's neighbours or the infer topic. Waiting retries hold at most half the window.

We drive aiokafka directly here rather than through a FastStream subscriber: FastStream's
batch subscriber runs one handler call at a time and its manual `ack()` commits the
consumer's position rather than given offsets, so it can neither overlap batches nor
commit out-of-order completions safely.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from aiaas.contract.priority import rank
from aiaas.errors import PublishFailed, TransactionFenced
from aiaas.kafka.commit_window import InFlightWindow, Partition
from aiaas.kafka.fetcher import FetchPacing
from aiaas.kafka.offset_committer import OffsetCommitter
from aiaas.kafka.past_markers import PastMarkerCommits
from aiaas.kafka.sink import refused_for_good
from aiaas.kafka.stall_watch import LoopStallWatch
from aiaas.kafka.transactions import Transactions
from aiaas.kafka.unparseable import UnparseableSearch, UnreadableRecord, is_unparseable
from aiaas.serving.job_queue import JobQueue
from aiaas.serving.latency_budget import LatencyBudget
from aiaas.serving.task_dump import awaiting
from aiaas.serving.worker import BatchWorker, ProcessedBatch, record_key

__all__ = ["JobPipeline", "PipelineStats", "Consumer", "UnreadableRecord"]

log = logging.getLogger("aiaas.pipeline")

_ACTIVE_S = 5.0
"""A tenant with a record taken this recently is active: while two are, each is held to its share of the window (and
fetches are not paced, nor for this long after a ranked record was taken: `_pace_fetches`)."""

_FAIR_POLL_MS = 10
"""While tenants share the window: the longest the fetch loop waits at a time for records to take (the other tenants'
are taken the moment they come) when none come and no batch finishes."""

_URGENT_POLL_MS = 5
"""While the window is full: the longest one wait for the urgent lanes' records (taken the moment they come) lasts when
no batch ends."""
_IDLE_POLL_MS = 100
"""How long one poll waits when nothing arrives (a poll returns at once when records are there)."""
_STOP_FETCH_S = 5.0
"""How long a stop waits for the fetch loop to see it before cancelling it. The fetch loop's own waits are far
shorter; past this it is inside a Kafka call still pending (a rebalance, or a call that never returns), and a
stopped service must still drain and exit."""
_CLOSE_COMMIT_S = 5.0
"""How long the pipeline's end waits for its last commit (after a drain it has none; after a model loop died, the
offsets already safe)."""
_KEEP_IN_GROUP_S = 1.0
"""While the fetch loop may take nothing (every partition paused, or the window full with the urgent lanes at their
cap), how long it goes without a poll at least (then up to `_IDLE_POLL_MS` more) before it polls to stay in the
group; a third of max.poll.interval where that is shorter. Such a poll names paused partitions and drops what was
prefetched of them."""
_MARKERS_EVERY_S = 1.0
"""How often an idle fetch loop looks for partitions to commit past transaction markers."""
_BATCH_END_LOOK_MS = 1
"""While the fetch loop takes records as they come beside a batch: how often it looks whether the batch has ended."""
_MOST_YIELDS = 16
"""Most turns of the event loop a model loop leaves to the other tasks between two batches (`_let_ready_tasks_run`)."""
_BATCH_TIME_WEIGHT = 0.2
"""Weight of the newest batch in the moving mean of batch times that bounds how long a paced fetch waits."""


class Consumer(Protocol):
    """The parts of aiokafka's AIOKafkaConsumer the pipeline uses."""

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Any]]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def seek_to_committed(self, *partitions: TopicPartition) -> dict[TopicPartition, int]: ...


@dataclass
class PipelineStats:
    """Counters an operator reads in the shutdown log line (and tests assert on)."""

    batches: int = 0
    jobs: int = 0
    pauses: int = 0
    rewinds: int = 0
    unreadable: int = 0
    commit_failures: int = 0
    transactions: int = 0
    aborted_transactions: int = 0
    stalls: int = 0


class JobPipeline:
    """Runs one consumer's records through a BatchWorker with bounded, pipelined in-flight work."""

    def __init__(
        self,
        worker: BatchWorker,
        consumer: Consumer,
        *,
        max_batch: int,
        max_wait_ms: int,
        max_in_flight: int,
        max_in_flight_bytes: int | None = None,
        latency_budget_ms: float | None = None,
        drain_timeout_s: float,
        due_at: Callable[[Any], float | None] = lambda record: None,
        delayed_topic: str | None = None,
        transactions: Transactions | None = None,
        model_instances: int = 1,
        tenant_of: Callable[[str], Hashable] | None = None,
        max_in_flight_per_tenant: int | None = None,
        stall_after_s: float | None = None,
        rejoin: Callable[[], None] | None = None,
        publish_in_cut_order: bool = True,
        is_urgent: Callable[[str], bool] | None = None,
        max_poll_interval_s: float = 300.0,
        busy_fetch_wait_ms: int = 0,
        commit_interval_ms: int = 0,
    ) -> None:
        self.worker = worker
        self._in_cut_order = publish_in_cut_order
        self.stats = PipelineStats()
        self._consumer = consumer
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._budget = LatencyBudget(latency_budget_ms / 1000, max_batch) if latency_budget_ms else None
        self._drain_timeout_s = drain_timeout_s
        self._tenant_of = functools.lru_cache(maxsize=4096)(tenant_of or (lambda topic: None))
        self._is_urgent = functools.lru_cache(maxsize=4096)(is_urgent or (lambda topic: False))
        self._window = InFlightWindow(max(max_in_flight, max_batch), max_in_flight_bytes, self._tenant_of,
                                      self._is_urgent)
        # One tenant may hold at most this much of the window; the rest stays free for the others' jobs.
        capacity = self._window.capacity
        self._tenant_share = max_in_flight_per_tenant or max(max_batch, capacity - max_batch)
        self._resume_room = min(max_batch, max(1, self._window.capacity // 4))
        self._owners_seen: dict[Hashable, float] = {}  # per tenant (retries aside): when a record of it was last taken
        # The most of the window urgent records may hold: the infer topics always keep a quarter of it.
        self._urgent_cap = max(1, self._window.capacity - self._window.capacity // 4)
        self._queue = JobQueue(due_at=due_at, delayed_topic=delayed_topic, owner_of=self._tenant_of,
                               rank_of=lambda record: rank(self._is_urgent(record.topic), record.headers))
        self._publishing: set[asyncio.Task[None]] = set()
        self._arrived = asyncio.Event()  # records were queued, or the fetch loop ended
        self._finished = asyncio.Event()  # a batch finished: room in the window, maybe drained
        self._committer = OffsetCommitter(consumer, interval_s=commit_interval_ms / 1000,  # at-least-once commits
                                          on_idle=self._finished.set, on_failure=self._count_commit_failure,
                                          before_commit=self._look_for_stall)
        self._stopping = asyncio.Event()
        self._fetching = True
        self._holding = 0  # > 0 while a drain needs the fetch loop to stop taking records
        self._last_poll = 0.0  # time.monotonic() of the consumer's last getmany
        # Taking nothing, poll at least this often (`max_poll_interval_s`: the consumer's setting).
        self._keep_in_group_s = min(_KEEP_IN_GROUP_S, max_poll_interval_s / 3)
        self._paused = False
        self._paused_as: tuple[set[TopicPartition], list[TopicPartition]] | None = None  # what `_pause` last did
        self._epoch = 0  # bumped by every rewind; outcomes of older batches no longer count
        self._delayed_paused = False
        self._transactions = transactions
        self._fatal: BaseException | None = None
        self._instances = model_instances
        self._last_cut_published: asyncio.Future[None] | None = None  # with several instances: the publish order
        self._undeliverable: dict[tuple[str, int, int], str] = {}  # records whose outcome the broker refused for good
        self._next_offset: dict[TopicPartition, int] = {}  # per partition: the offset after the last record taken
        self._unparseable = UnparseableSearch(consumer, max_steps=4 * max_batch + 8, logger=log)
        self._stall = LoopStallWatch(stall_after_s, self._on_stall) if stall_after_s else None
        self._rejoin = rejoin  # leaves and rejoins the group (unsubscribe + subscribe); None: seek to committed
        self._rejoining: asyncio.Task[None] | None = None
        self._assigned = asyncio.Event()
        self._model_loops = 0  # model loops running now
        self._in_model = 0  # batches in the model now (at most one per model loop)
        self._batch_s: float | None = None  # a moving mean of how long a batch takes in the worker
        # Not with a latency budget: it counts a job's time from when it was taken, and would not see the time held at
        # the broker.
        self._pacing = FetchPacing(consumer, max_batch=max_batch, hold_ms=0 if self._budget else busy_fetch_wait_ms)
        # Lets the group's lag reach 0 where partitions end in transaction markers (KEDA scales on it).
        self._past_markers = PastMarkerCommits(consumer, self._window, next_offsets=lambda: self._next_offset)
        self._markers_checked = 0.0  # monotonic time of the last check

    @property
    def rebalance_listener(self) -> ConsumerRebalanceListener:
        """Pass to `consumer.subscribe(..., listener=...)`: drains and commits before partitions move."""
        return _DrainOnRevoke(self)

    @property
    def assigned(self) -> bool:
        """Whether the group has given this consumer an assignment (which may be empty: more replicas than
        partitions) since it joined."""
        return self._assigned.is_set()

    @property
    def in_flight(self) -> tuple[int, int]:
        """Jobs taken and not yet answered, and their bytes."""
        return len(self._window), self._window.bytes

    def next_offsets(self) -> dict[TopicPartition, int]:
        """Per partition records were taken from: the offset of the next record to take."""
        return dict(self._next_offset)

    def stop(self) -> None:
        """Stop taking new records; `run` returns once in-flight work is drained and committed."""
        self._stopping.set()
        self._arrived.set()

    async def run(self) -> PipelineStats:
        """Consume until `stop()`; then drain, commit and return the counters.

        If the model loop dies (a bug, not a bad job), the pipeline stops at once and re-raises,
        so the process exits and its unfinished jobs are redelivered — it never hangs silently.
        """
        model_loops = [asyncio.create_task(self._model_loop(), name=f"aiaas-model-loop-{i}")
                       for i in range(self._instances)]
        fetch_loop = asyncio.create_task(self._fetch_loop(), name="aiaas-fetch-loop")
        watch = asyncio.create_task(self._stall.run(), name="aiaas-stall-watch") if self._stall else None
        stopped = asyncio.create_task(self._stopping.wait(), name="aiaas-stop-wait")
        try:
            await asyncio.wait({*model_loops, fetch_loop, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped.done() and not fetch_loop.done():
                await self._end_fetch_loop(fetch_loop, model_loops)
            ended = [loop for loop in model_loops if loop.done()]
            if ended:
                for task in (fetch_loop, *model_loops):
                    task.cancel()
                await asyncio.gather(fetch_loop, *model_loops, return_exceptions=True)
                ended[0].result()  # raises what killed it
                raise RuntimeError("the model loop ended while the service was running")
            if not fetch_loop.cancelled():
                fetch_loop.result()
            if self._fatal is not None:
                raise self._fatal
        finally:
            stopped.cancel()
            await asyncio.gather(stopped, return_exceptions=True)
            self._fetching = False
            self._arrived.set()
            if not any(loop.done() for loop in model_loops) and not await self.drain(self._drain_timeout_s):
                log.warning("drain timed out after %.0f s; unfinished jobs will be delivered again",
                            self._drain_timeout_s)
            background = [task for task in (watch, self._rejoining) if task is not None]
            for task in (*model_loops, fetch_loop, *self._publishing, *background):
                task.cancel()
            await asyncio.gather(*model_loops, fetch_loop, *self._publishing, *background, return_exceptions=True)
            await self._committer.close(_CLOSE_COMMIT_S)  # after a model loop died no drain ran: what is safe goes
        return self.stats

    @staticmethod
    async def _end_fetch_loop(fetch_loop: asyncio.Task[None], model_loops: list[asyncio.Task[None]]) -> None:
        """After `stop()`: give the fetch loop `_STOP_FETCH_S` to see it, then cancel it, so that no Kafka call that
        never returns can keep a stopped service from draining and exiting. Where it was waiting goes to the log
        first."""
        await asyncio.wait({fetch_loop, *model_loops}, timeout=_STOP_FETCH_S, return_when=asyncio.FIRST_COMPLETED)
        if fetch_loop.done() or any(loop.done() for loop in model_loops):
            return
        log.warning("the fetch loop has not stopped %g s after the stop; cancelling it. It is waiting in %s",
                    _STOP_FETCH_S, awaiting(fetch_loop.get_coro()))
        fetch_loop.cancel()
        await asyncio.gather(fetch_loop, return_exceptions=True)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every taken record is done and committed; False if `timeout_s` ran out.

        Every queued record is also in the window, so a queued record that may run keeps the window above what is
        left behind until a model loop has run it."""
        self._holding += 1
        try:
            return await self._wait_while(
                lambda: len(self._window) > self._left_behind() or bool(self._publishing) or self._committer.busy,
                timeout_s)
        finally:
            self._holding -= 1

    async def _wait_while(self, busy: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `busy()` is false, looking again whenever a batch or commit finishes (and twice a second);
        False if `timeout_s` ran out first."""
        async def settled() -> None:
            while busy():
                self._committer.flush()  # what this waits for is not to wait for the commit interval too
                self._finished.clear()
                try:
                    await asyncio.wait_for(self._finished.wait(), 0.5)
                except TimeoutError:
                    pass

        try:
            await asyncio.wait_for(settled(), timeout_s)
            return True
        except TimeoutError:
            return False

    def _left_behind(self) -> int:
        """Queued records a drain does not wait for (they stay uncommitted and come back later): retries whose time
        has not come; once the model loops have ended (stopping), everything still queued, such as a retry whose
        time came during the drain, which no model loop is left to run."""
        return len(self._queue) if not self._model_loops else self._queue.waiting()

    def forget(self, partitions: Iterable[TopicPartition] | None) -> None:
        """Abandon in-flight records of `partitions` (all when None), uncommitted: whoever owns them next runs them
        again. Where the next record of each is, is forgotten too: they restart from their committed offsets."""
        gone = None if partitions is None else {Partition(*p) for p in partitions}
        self._epoch += 1
        self._window.forget(gone)
        self._committer.forget(gone)
        self._queue.forget(gone)
        if gone is None:
            self._next_offset.clear()
        else:
            for partition in gone:
                self._next_offset.pop(TopicPartition(*partition), None)
        self._finished.set()

    # -- fetch loop ------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            room = 0 if self._holding else self._window.room
            urgent = self._urgent_partitions()
            # Once full, the window reopens only when a batch's worth is free: taking back whatever one finished
            # batch freed would let batches shrink to that size and stay small (each exactly-once transaction then
            # carries one or two jobs).
            if room == 0 or (self._paused and not self._may_reopen(room)):
                await self._wait_paused(urgent if not self._holding else [])
                continue
            self._resume()
            self._hold_back_retries()
            await self._take_urgent(urgent, self._urgent_first(urgent, room))  # the urgent lanes' records first
            await self._take_rest(urgent)

    async def _wait_paused(self, urgent: list[TopicPartition]) -> None:
        """The window is full: pause every partition but the urgent lanes', and wait for a batch to finish. The urgent
        lanes go on fetching meanwhile, and their records are taken the moment they come (while fewer than a batch of
        them are in flight, and never more than a batch past the window)."""
        self._pause(keep=urgent)
        self._finished.clear()
        past_full = self._window.capacity + self._max_batch - len(self._window)
        lanes, most = self._urgent_room(urgent, min(past_full, self._max_batch - self._window.urgent))
        if lanes and most > 0:
            await self._records_or_a_batch_end(lanes, most, _URGENT_POLL_MS)
        elif not await self._a_batch_ends(_IDLE_POLL_MS):
            await self._poll_paused(urgent)

    async def _poll_paused(self, urgent: list[TopicPartition]) -> None:
        """Poll while taking nothing, only as often as staying in the group needs (`_keep_in_group_s` since the last
        poll; Kafka's max.poll.interval counts from it): a poll that names a paused partition drops what was
        prefetched of it, fetched again once it resumes. With urgent lanes, only they are named, paused for the call
        (at their cap or their tenants' share), so the infer partitions keep theirs; without (none is ours, or a
        drain holds every partition back), the poll names them all. After a rebalance new partitions start unpaused,
        so keep what it returns."""
        if time.monotonic() - self._last_poll < self._keep_in_group_s:
            return
        if urgent:
            self._consumer.pause(*urgent)
            self._take(await self._poll(0, self._max_batch, urgent))
            self._consumer.resume(*urgent)
        else:
            self._take(await self._poll(0, self._max_batch))

    async def _take_urgent(self, urgent: list[TopicPartition], most: int) -> bool:
        """Take up to `most` records of the urgent lanes that the fetcher holds (no wait), within their cap on the
        window and their tenants' shares; False when none may be taken (nothing was polled). Only those partitions are
        polled: a poll that names a paused partition drops what was prefetched of it, and the infer topics'
        prefetched records must wait out a pause."""
        lanes, most = self._urgent_room(urgent, most)
        if not lanes or most <= 0:
            return False
        self._take(await self._poll(0, most, lanes))
        return True

    def _urgent_room(self, urgent: list[TopicPartition], most: int) -> tuple[list[TopicPartition], int]:
        """The urgent lanes whose records may be taken now, and how many at most (up to `most`): within the lanes' cap
        on the window and their tenants' shares."""
        return self._within_share(urgent, min(most, self._urgent_cap - self._window.urgent))

    async def _take_rest(self, urgent: list[TopicPartition]) -> None:
        """After the urgent lanes: the other tenants' records first (`_take_fairly`), then whatever comes, waiting a
        little when nothing has. Urgent lanes at their cap are left out, so the infer topics get their share."""
        if not (room := self._window.room) or await self._take_fairly(room):
            return
        if room := self._window.room:  # less what the other tenants' records took
            capped = bool(urgent) and self._window.urgent >= self._urgent_cap
            others = list(self._consumer.assignment().difference(urgent)) if capped else None
            if others == []:  # only urgent partitions are ours, and they are at their cap: wait for a batch to end
                self._finished.clear()
                await self._a_batch_ends(_IDLE_POLL_MS)
                await self._poll_paused(urgent)
                return
            fetched = await self._poll(_IDLE_POLL_MS, room, others)
            self._take(fetched)
            if not fetched:
                await self._commit_past_markers()

    @staticmethod
    def _urgent_first(urgent: list[TopicPartition], room: int) -> int:
        """How many urgent records to take before the rest: at most three quarters of the room, whichever bound
        (records or bytes) sets it; none where no urgent partition is ours."""
        return room * 3 // 4 if urgent else 0

    def _within_share(self, urgent: list[TopicPartition], first: int) -> tuple[list[TopicPartition], int]:
        """While several tenants are active, the urgent lanes of tenants below their share of the window, and at most
        what the fullest of them has left of it: the urgent lane is no way around `max_in_flight_per_tenant`."""
        if not self._several_tenants_active():
            return urgent, first
        left = {tp: self._tenant_share - self._window.load(self._tenant_of(tp.topic)) for tp in urgent}
        lanes = [tp for tp in urgent if left[tp] > 0]
        return lanes, min([first, *(left[tp] for tp in lanes)])

    async def _commit_past_markers(self) -> None:
        """Idle: at most once a second, commit partitions' positions past trailing transaction markers
        (`PastMarkerCommits`), while nothing else moves offsets. Runs in the fetch loop, so no record is taken
        meanwhile."""
        now = time.monotonic()
        if now - self._markers_checked < _MARKERS_EVERY_S:
            return
        self._markers_checked = now
        if (self._holding or self._publishing or self._committer.busy or self._stopping.is_set()
                or (self._rejoining is not None and not self._rejoining.done())):
            return
        try:
            await self._past_markers.check()
        except Exception as exc:  # noqa: BLE001 - a commit that failed (a rebalance): the next idle second retries
            log.debug("committing past transaction markers failed: %s", exc)

    def _take(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        records = [record for part in fetched.values() for record in part]
        if records:
            now, taken_ns = time.monotonic(), time.time_ns()
            for tp, part in fetched.items():
                if part:
                    self._next_offset[tp] = part[-1].offset + 1
                    if tp.topic != self._queue.delayed_topic:
                        self._owners_seen[self._tenant_of(tp.topic)] = now
                        _mark_taken(part, taken_ns)
            self._window.take(records)
            self._queue.extend(records)
            self._arrived.set()
            if self._pacing.paced:  # another tenant or a ranked job may have come: no more pacing then
                self._pace_fetches()

    async def _poll(self, timeout_ms: int, max_records: int,
                    partitions: list[TopicPartition] | None = None) -> dict[TopicPartition, list[Any]]:
        """The consumer's next records (of `partitions` only, when given); a record the client cannot parse is
        stepped over, never a dead loop."""
        if max_records < 1 or partitions == []:
            return {}  # (aiokafka raises on the first; the second would name every partition)
        self._last_poll = time.monotonic()
        try:
            return await self._consumer.getmany(*(partitions or ()), timeout_ms=timeout_ms, max_records=max_records)
        except Exception as exc:  # e.g. a header key that is not UTF-8 (aiokafka decodes keys as it parses)
            if not is_unparseable(exc):
                raise  # the broker or the connection: not a record's fault
            return await self._step_over_unreadable(exc)

    async def _step_over_unreadable(self, error: BaseException) -> dict[TopicPartition, list[Any]]:
        """getmany raised on a record it cannot parse: find it, record it as unreadable, and go on after it.

        `UnparseableSearch.step_over` does it: the partitions go back to the record after the last one taken, then
        are read one record at a time until the unreadable record is found. It becomes an `UnreadableRecord` (the
        worker dead-letters it with its coordinates) and reading resumes after it.
        """
        found = await self._unparseable.step_over(error, self._next_offset)
        self.stats.unreadable += sum(isinstance(r, UnreadableRecord) for records in found.values() for r in records)
        return found

    def _may_reopen(self, room: int) -> bool:
        """Whether a full window has room enough to take records again: a batch's worth, or half its byte budget
        free (large records may never leave a batch's worth of room), or nothing in flight."""
        if room >= self._resume_room or not len(self._window):
            return True
        budget, window = self._window.max_bytes, self._window
        # Bytes are the bound (the record count has a batch's worth free): half the budget free will do.
        return (budget is not None and window.capacity - len(window) >= self._resume_room
                and window.bytes <= budget // 2)

    def _urgent_partitions(self) -> list[TopicPartition]:
        """The assigned partitions of urgent lanes."""
        return [tp for tp in self._consumer.assignment() if self._is_urgent(tp.topic)]

    def _pause(self, keep: list[TopicPartition]) -> None:
        """Pause every assigned partition but `keep` (the urgent lanes, unless draining)."""
        # Repeated on purpose (partitions assigned by a rebalance start unpaused), but only when something changed:
        # a full window of a busy service comes here every few ms.
        assigned = self._consumer.assignment()
        if self._paused and self._paused_as == (assigned, keep):
            return
        self._paused_as = (assigned, keep)
        self._consumer.pause(*(assigned.difference(keep) if keep else assigned))
        if keep:
            self._consumer.resume(*keep)
        if not self._paused:
            self._paused = True
            self.stats.pauses += 1
            self._pace_fetches()
            log.debug("window full (%d in flight): partitions paused", len(self._window))

    def _resume(self) -> None:
        if self._paused:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False
            self._delayed_paused = False
            self._pace_fetches()

    async def _take_fairly(self, room: int) -> bool:
        """Take the other tenants' records before the largest one's once it holds its share; with several tenants
        active, also none of the largest one's past its share. True when that was all (else the caller polls).

        A tenant flooding the service past its capacity then holds at most its share of the window, and `_cut` puts
        the other tenants' jobs into the next batch beside the flood's. Its partitions are not paused: their records
        stay prefetched in the client, ready the moment a batch of theirs finishes (pausing them made the client
        long-poll the idle partitions first, which cut a busy tenant's throughput sharply; bench/tenant_flood.py).
        A tenant alone (no other tenant's record taken for `_ACTIVE_S`) may use the whole window.
        """
        retries = self._tenant_of(self._queue.delayed_topic) if self._queue.delayed_topic else object()
        loads = {owner: self._window.load(owner) for owner in self._window.owners() if owner != retries}
        if not loads:
            return False
        largest = max(loads, key=loads.__getitem__)
        several = self._several_tenants_active()
        if not several and loads[largest] < self._tenant_share:
            return False  # one tenant with room to spare: nothing to be fair about
        # Past its share (or beside others), the largest tenant's records wait for the others' to be taken first:
        # so another tenant's first job gets in as soon as there is room, whatever the largest has prefetched.
        others = [tp for tp in self._consumer.assignment() if self._tenant_of(tp.topic) != largest]
        if others:
            self._take(await self._poll(0, room, others))
        if not several:
            return False
        left = min(self._window.room, self._tenant_share - loads[largest])
        if left > 0:
            self._take(await self._poll(_FAIR_POLL_MS, left))
            return True
        self._finished.clear()
        await self._records_or_a_batch_end(others, self._window.room, _FAIR_POLL_MS)
        return True

    async def _records_or_a_batch_end(self, partitions: list[TopicPartition], most: int, within_ms: int) -> None:
        """Take up to `most` records of `partitions` the moment the client has them, until a batch ends, for at most
        `within_ms` (the caller cleared `_finished`).

        For the records that must not wait behind a full window or a flooding tenant's share: the urgent lanes', the
        other tenants'. Waiting for the batch alone left such a record in the client meanwhile, and aiokafka fetches no
        partition whose records wait to be taken: the next record on that partition then waited for a fetch that did
        not name it to come back, up to fetch_max_wait_ms (bench/results, the tenant flood of 2026-12-06).

        The wait is a row of short polls, each returning as soon as records come, rather than one poll raced against
        the batch's end: no poll is cancelled while the service runs, so none can leave the client mid-fetch (a
        cancelled poll used to stay counted as in progress and switch off max.poll.interval;
        `aiaas.kafka.fetch_context` now repairs that for any poll that raises)."""
        if not partitions or most < 1:
            await self._a_batch_ends(within_ms)
            return
        deadline = time.monotonic() + within_ms / 1000
        while not self._finished.is_set() and (left_s := deadline - time.monotonic()) > 0:
            fetched = await self._poll(min(_BATCH_END_LOOK_MS, math.ceil(left_s * 1000)), most, partitions)
            if fetched:
                self._take(fetched)
                return

    async def _a_batch_ends(self, within_ms: int) -> bool:
        """Wait at most `within_ms` for a batch to finish (the caller cleared `_finished` before what it waits
        after); whether one did."""
        try:
            await asyncio.wait_for(self._finished.wait(), within_ms / 1000)
        except TimeoutError:
            return False
        return True

    def _several_tenants_active(self) -> bool:
        """Whether records of two tenants or more were taken in the last `_ACTIVE_S` (tenants come and go: only the
        active ones are kept)."""
        now = time.monotonic()
        for owner in [owner for owner, seen in self._owners_seen.items() if now - seen >= _ACTIVE_S]:
            del self._owners_seen[owner]
        return len(self._owners_seen) >= 2

    def _hold_back_retries(self) -> None:
        """Pause the retry topic while waiting retries fill half the window, so fresh jobs always have room."""
        if self._queue.delayed_topic is None:
            return
        full = self._queue.waiting() >= self._window.capacity // 2
        if full != self._delayed_paused:
            retry_partitions = [tp for tp in self._consumer.assignment() if tp.topic == self._queue.delayed_topic]
            (self._consumer.pause if full else self._consumer.resume)(*retry_partitions)
            self._delayed_paused = full

    def _on_assigned(self) -> None:
        self._paused = self._delayed_paused = False  # a new assignment starts unpaused, the retry topic's too
        self._assigned.set()

    # -- model loop ------------------------------------------------------------------------

    async def _model_loop(self) -> None:
        self._model_loops += 1
        try:
            await self._run_batches()
        finally:
            self._model_loops -= 1  # a drain notices within its next half second

    async def _run_batches(self) -> None:
        while True:
            records = await self._next_batch()
            if records is None:
                return
            if not records:
                continue  # another model instance took them while this one let the batch grow
            epoch = self._epoch
            turn = self._publish_turn()
            started = time.perf_counter()
            self._in_model += 1
            self._pace_fetches()
            try:
                processed = await self.worker.run(records, self._undeliverable)
            except BaseException:
                if turn is not None:
                    turn[1].set_result(None)  # the batch cut after this one need not wait (the pipeline stops)
                raise
            finally:
                self._in_model -= 1
                self._pace_fetches()
            took_s = time.perf_counter() - started
            mean = self._batch_s
            self._batch_s = took_s if mean is None else mean + (took_s - mean) * _BATCH_TIME_WEIGHT
            if self._budget is not None:
                self._budget.observe(len(records), took_s)
            self.stats.batches += 1
            self.stats.jobs += len(records)
            task = asyncio.create_task(self._publish(processed, epoch) if turn is None else
                                       self._publish_in_turn(turn, processed, epoch))
            self._publishing.add(task)
            task.add_done_callback(self._publish_done)
            if self.worker.calls_on_event_loop(self.worker.runtime):  # (else the others ran during the call)
                await _let_ready_tasks_run()

    def _pace_fetches(self) -> None:
        """While every model instance has a batch, the consumer's fetches wait at the broker for about a batch of jobs
        (up to `busy_fetch_wait_ms`, and never longer than a batch takes) instead of coming back with the first one
        (`FetchPacing`): the jobs they bring would wait for an instance anyway. At partial load this saves the broker
        and the service many fetches.

        Only while the batches run on model threads: a call on the event loop holds back every fetch and its answer
        until it ends, which paces them already. Only while jobs run in the order they came: one tenant active and no
        ranked job (urgent lane or priority header) taken for `_ACTIVE_S`; another tenant's job, or a ranked one,
        goes ahead of the queue into the next batch, so a delayed fetch would delay it. Nor while the window is paused:
        its fetches (the urgent lanes' alone) find nothing to take, and a short wait would only make them more
        frequent."""
        if not self._pacing.enabled:
            return
        busy = (self._in_model >= self._instances and not self._paused
                and not self.worker.calls_on_event_loop(self.worker.runtime) and not self._several_tenants_active()
                and time.monotonic() - self._queue.last_ranked >= _ACTIVE_S)
        if busy or self._pacing.paced:
            batch_ms = self._batch_s * 1000 if self._batch_s is not None else math.inf
            self._pacing.pace(busy, self._window.mean_record_bytes, batch_ms)

    def _publish_turn(self) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]] | None:
        """With several model instances, a batch finishing before the one cut ahead of it waits to publish.

        Called as the batch is cut: (the previous batch's "published" future, this batch's own). One instance
        needs none: its batches finish in the order they were cut. Nor does a streaming runtime's
        (`publish_in_cut_order=False`): each of its jobs is a batch of its own that ends when its answer does, and a
        short answer must not wait for a long one cut before it."""
        if self._instances == 1 or not self._in_cut_order:
            return None
        previous, self._last_cut_published = self._last_cut_published, asyncio.get_running_loop().create_future()
        return previous, self._last_cut_published

    async def _publish_in_turn(self, turn: tuple[asyncio.Future[None] | None, asyncio.Future[None]],
                               batch: ProcessedBatch, epoch: int) -> None:
        previous, mine = turn
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._publish(batch, epoch)
        finally:
            if not mine.done():
                mine.set_result(None)

    async def _next_batch(self) -> list[Any] | None:
        """Wait for records, give a small batch `max_wait_ms` to grow, and cut it."""
        while not self._queue.any_ready():
            if not self._fetching:
                return None  # stopping: retries whose time has not come stay uncommitted and come back later
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), self._queue.until_next_due())
            except TimeoutError:
                pass
        most = self._most_jobs()
        if len(self._queue) < most and self._max_wait_s > 0 and self._fetching:
            deadline = asyncio.get_running_loop().time() + self._max_wait_s
            while len(self._queue) < most and self._fetching:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
        return self._cut(most)

    def _cut(self, most: int) -> list[Any]:
        """Up to `most` records that may run now (`JobQueue.cut`): in turns while several tenants are in flight."""
        return self._queue.cut(most, in_turns=len(self._window.owners()) > 1)

    def _most_jobs(self) -> int:
        """max_batch, or with a latency budget as many as it allows (`LatencyBudget`), except while the window is
        full: jobs then wait in Kafka, where their wait is not seen, and throughput is what shortens it."""
        if self._budget is None or self._paused or self._window.room == 0:
            return self._max_batch
        taken_ns = self._queue.oldest_taken_ns()
        if taken_ns is None:
            return self._max_batch
        # The wall clock, as `taken_ns` is: a clock step makes one cut look late or early, no more.
        return self._budget.most_jobs(max(0.0, (time.time_ns() - taken_ns) / 1e9))

    # -- publish + commit --------------------------------------------------------------------

    async def _publish(self, batch: ProcessedBatch, epoch: int) -> None:
        if self._transactions is not None:
            await self._publish_in_transaction(batch, epoch)
            return
        if self._stale(epoch):  # rewound, revoked or frozen since it was cut: its jobs run again (or elsewhere)
            self.worker.discard(batch)
            return
        try:
            await self.worker.publish(batch)
        except Exception as exc:
            if not await self._dead_letter_refusals(exc):  # the broker did not take every outcome: run them again
                log.error("publishing a batch of %d failed (%s); rewinding to the first unfinished job",
                          len(batch.jobs), exc)
                self._note_refusals(exc)
                self._rewind(epoch)
                return
            refused = {record_key(r) for r, _ in exc.failures} if isinstance(exc, PublishFailed) else set()
            self.worker.delivered(batch, refused)
        else:
            self.worker.delivered(batch)
        self._forget_refusals(batch)
        if epoch != self._epoch:
            return  # a rewind or revocation happened since: these offsets are no longer ours to commit
        self._committer.add(self._window.finish(batch.records))

    async def _publish_in_transaction(self, batch: ProcessedBatch, epoch: int) -> None:
        """Exactly-once: the batch's outcomes and the offsets they make safe, in one transaction."""
        assert self._transactions is not None  # `_publish` calls this in exactly-once mode only
        try:
            async with self._transactions.batch() as transaction:
                if epoch != self._epoch:
                    raise _Stale()  # rewound or revoked while waiting for our turn: these jobs run again
                await self.worker.publish(batch)
                if epoch != self._epoch:
                    raise _Stale()
                await transaction.commit_offsets(self._window.offsets_after(batch.records))
                if self._stale(epoch):  # the last moment: a zombie's transaction must not commit
                    raise _Stale()
        except _Stale:
            self.worker.discard(batch)
            self.stats.aborted_transactions += 1
            return
        except TransactionFenced as exc:
            log.error("exactly-once: %s; stopping so the replica that took over runs alone", exc)
            self._fatal = exc
            self.forget(None)
            self.stop()
            return
        except Exception as exc:
            log.error("a transaction of %d jobs failed (%s); aborted, rewinding to the first unfinished job",
                      len(batch.jobs), exc)
            self.stats.aborted_transactions += 1
            self._note_refusals(exc)
            self._rewind(epoch)
            return
        self.worker.delivered(batch)
        self._forget_refusals(batch)
        self.stats.transactions += 1
        if epoch == self._epoch:
            self._window.finish(batch.records)

    async def _dead_letter_refusals(self, exc: BaseException) -> bool:
        """When the broker refused some outcomes for good (a topic it will not take, a record too large) and took
        the rest, dead-letter those jobs now, so the batch is finished without a rewind; True when that worked.
        (In a transaction a refused send spoils the whole transaction: those batches rewind, `_note_refusals`.)"""
        failures = exc.failures if isinstance(exc, PublishFailed) else []
        if not failures or not all(refused_for_good(error) for _, error in failures):
            return False
        refused = [(record, f"{type(error).__name__}: {error}"[:500]) for record, error in failures]
        log.warning("the broker refused the outcome of %d job(s) for good (%s); dead-lettering them",
                    len(refused), refused[0][1])
        try:
            await self.worker.dead_letter_undeliverable(refused)
        except Exception as again:  # noqa: BLE001 - then the rewind and the bare dead letters on the rerun
            log.error("dead-lettering refused outcomes failed too (%s)", again)
            return False
        return True

    def _note_refusals(self, exc: BaseException) -> None:
        """Records whose outcome the broker refused for good get only a bare dead letter next time, so a job
        that can never be answered does not rewind its partition for ever."""
        for record, error in exc.failures if isinstance(exc, PublishFailed) else ():
            if refused_for_good(error):
                self._undeliverable[record_key(record)] = f"{type(error).__name__}: {error}"[:500]

    def _forget_refusals(self, batch: ProcessedBatch) -> None:
        if self._undeliverable:
            for record in batch.records:
                self._undeliverable.pop(record_key(record), None)

    def _stale(self, epoch: int) -> bool:
        """Whether a batch cut in `epoch` may no longer publish or commit (looks for a stall first)."""
        self._look_for_stall()
        return epoch != self._epoch

    def _look_for_stall(self) -> None:
        """Before anything commits: a stall since the last look drops what is held (`_on_stall`), pending commits
        included."""
        if self._stall is not None:
            self._stall.check()

    def _on_stall(self, gap_s: float) -> None:
        """The loop stood still past the group session: drop everything held, and rejoin before taking more."""
        self.stats.stalls += 1
        log.warning("this replica stood still for %.1f s (frozen, paused or blocked), past its group session: its "
                    "partitions may have moved. Dropping the %d jobs it held, uncommitted, and rejoining the group",
                    gap_s, len(self._window))
        self.forget(None)
        if self._rejoining is None or self._rejoining.done():
            self._holding += 1  # released by the task: no record is taken until the group has answered
            self._rejoining = asyncio.create_task(self._rejoin_after_stall(), name="aiaas-rejoin")

    async def _rejoin_after_stall(self) -> None:
        try:
            # Batches already cut are stale: they discard or abort. Wait for them, so none commits after this.
            await self._wait_while(lambda: bool(self._publishing) or self._committer.busy, self._drain_timeout_s)
            self.forget(None)
            if self._rejoin is not None:
                self._assigned.clear()
                self._rejoin()  # a new member: its assignment starts from the committed offsets
                try:
                    await asyncio.wait_for(self._assigned.wait(), self._drain_timeout_s + 30)
                except TimeoutError:
                    log.warning("no assignment %.0f s after rejoining the group", self._drain_timeout_s + 30)
            else:
                assigned = self._consumer.assignment()
                if assigned:
                    await self._consumer.seek_to_committed(*assigned)
                self.forget(None)
        except Exception as exc:  # noqa: BLE001 - the fetch loop must get going again whatever happened
            log.error("rejoining the group after a stall failed (%s)", exc)
        finally:
            self._holding -= 1
            self._finished.set()

    def _publish_done(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        self._finished.set()

    def _count_commit_failure(self) -> None:
        self.stats.commit_failures += 1

    def _rewind(self, epoch: int) -> None:
        if epoch != self._epoch:
            return  # another failed batch of the same epoch already rewound
        points = self._window.first_pending()
        self.forget(TopicPartition(*p) for p in points)
        assigned = self._consumer.assignment()
        for partition, offset in points.items():
            tp = TopicPartition(*partition)
            if tp in assigned:
                self._consumer.seek(tp, offset)
        self.stats.rewinds += 1


def _mark_taken(records: list[Any], taken_ns: int) -> None:
    """When the records were taken from the broker: where their jobs' `process` spans start (worker.py). Not a retry
    record's: it waits out its backoff in the queue, and its span starts with its batch (the backoff counts where
    the earlier attempts do)."""
    try:
        for record in records:
            record.taken_ns = taken_ns
    except AttributeError:  # a stand-in that takes no attribute (an unreadable record's): its span starts later
        pass


class _Stale(Exception):
    """The batch's epoch ended before its transaction could commit."""


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type information
    """Before partitions move to another instance, finish and commit what we hold of them."""

    def __init__(self, pipeline: JobPipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        if _membership_lost(self._pipeline._consumer):  # noqa: SLF001 - same module
            # The group dropped us already (session expired): the partitions are someone else's, and committing
            # what we hold of them would answer those jobs twice. Drop it all, uncommitted.
            log.warning("rebalance after this replica was dropped from its group: abandoning the %d jobs it held",
                        len(self._pipeline._window))  # noqa: SLF001
            self._pipeline.forget(None)
            return
        if not await self._pipeline.drain(self._pipeline._drain_timeout_s):  # noqa: SLF001 - same module
            log.warning("rebalance: in-flight work not drained in time; abandoning it to the new owner")
        # Whatever is left of these partitions — retries still waiting for their time, or work that did not drain —
        # is uncommitted and goes to the new owner: dropped here, or it would hold back this window and its
        # partitions' commits, and run twice if the partitions came back.
        self._pipeline.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._pipeline._on_assigned()  # noqa: SLF001 - same module


def _membership_lost(consumer: Consumer) -> bool:
    """Whether the group coordinator no longer knows this member (aiokafka resets the generation to -1 on
    UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION, before it calls the revocation listener). aiokafka has no public
    "partitions lost" callback (Java's onPartitionsLost), so this reads its coordinator; False where there is none."""
    generation = getattr(getattr(consumer, "_coordinator", None), "generation", None)
    return isinstance(generation, int) and generation < 0


async def _let_ready_tasks_run() -> None:
    """Leave the event loop's turns to the other tasks until none is ready to run, for at most `_MOST_YIELDS` turns.

    A job's way through the service is a chain of short steps, each waiting for a turn of the loop: a fetch response
    read, the client's fetch bookkeeping, the fetch loop's take, a batch's publish, the producer's send, its
    acknowledgement, the commit. A model loop with a backlog that yielded once between batches let each chain go one
    step per batch: under load a job waited for a dozen batches' work on its way in and out (bench/results, the
    tenant flood of 2026-12-06). Yielding until nothing else is ready lets those chains run on until they wait for
    the network, before the next batch holds the loop again; an idle loop costs one turn. (The ready queue is
    asyncio's own loop's; on another loop, one turn.)"""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    for _ in range(_MOST_YIELDS if ready is not None else 1):
        await asyncio.sleep(0)
        if not ready:
            return
