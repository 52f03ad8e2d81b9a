"""How far a scenario's stream got, while it runs: results and dead letters seen so far (read_committed),
and when each job's first result was seen (the tenant flood's latencies).

The faults are placed by progress (e.g. "kill the worker once 37 % of the jobs have a result"),
not by time, so they land mid-stream whatever the machine's speed and whatever N is.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from aiaas.contract.topics import ModelTopics, dlq_topic
from aiaas.kafka.admin import partition_count
from aiaas.settings import KafkaSettings

__all__ = ["Monitor"]


class Monitor:
    """Follows the results and DLQ topics from the beginning; counts the good jobs answered."""

    def __init__(self, kafka: KafkaSettings, good_ids: set[str], results_topics: list[str] | None = None) -> None:
        self.kafka, self.good_ids = kafka, good_ids
        self.results_topics = results_topics or [ModelTopics.of("vision", kafka.topic_prefix).results]
        self.dlq_topic = dlq_topic(kafka.topic_prefix)
        self.answered: set[str] = set()
        """Good job ids with a (committed) result."""
        self.other_ids: set[str] = set()
        """Job ids of results that are not good jobs (the bad inputs' error results)."""
        self.first_seen: dict[str, float] = {}
        """Job id → when its first result was read here (wall clock): the end of its latency."""
        self.dlq = 0
        self.changed_at = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    @property
    def progress(self) -> float:
        """Share of the good jobs answered (0..1)."""
        return len(self.answered) / max(1, len(self.good_ids))

    def percent(self) -> str:
        """Progress for a note, e.g. `37 %`."""
        return f"{100 * self.progress:.0f} %"

    async def start(self) -> None:
        """Assign every partition of both topics from the beginning and start following."""
        self._consumer = AIOKafkaConsumer(**self.kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                          isolation_level="read_committed")
        await self._consumer.start()
        parts = []
        for topic in (*self.results_topics, self.dlq_topic):
            parts += [TopicPartition(topic, p) for p in range(await partition_count(self.kafka, topic, wait_s=10))]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == self.dlq_topic:
                        self.dlq += 1
                        continue
                    key = record.key.decode(errors="replace") if record.key else ""
                    (self.answered if key in self.good_ids else self.other_ids).add(key)
                    self.first_seen.setdefault(key, time.time())
                self.changed_at = time.monotonic()

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def reach(self, fraction: float, stall_s: float) -> bool:
        """Wait until `fraction` of the good jobs are answered; False if nothing moved for `stall_s`."""
        while self.progress < fraction:
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise what stopped the monitor
            if time.monotonic() - self.changed_at > stall_s:
                return False
            await asyncio.sleep(0.02)
        return True

    async def advance(self, timeout: float) -> bool:
        """Wait until one more good job is answered (or all are); False after `timeout` without."""
        before, deadline = len(self.answered), time.monotonic() + timeout
        while len(self.answered) == before and self.progress < 1:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def complete(self, dlq_expected: int, stall_s: float) -> bool:
        """Wait until every good job is answered and `dlq_expected` dead letters are in.

        False when nothing new arrived for `stall_s` before that.
        """
        self.changed_at = max(self.changed_at, time.monotonic())  # the wait starts now
        while self.progress < 1 or self.dlq < dlq_expected:
            if self._task is not None and self._task.done():
                self._task.result()
            if time.monotonic() - self.changed_at > stall_s:
                return False
            await asyncio.sleep(0.05)
        return True
