"""A model service's metrics endpoint, target file and probes, and the once-a-second sample behind its gauges.

`ServiceMonitor.open` starts the endpoint before the model is loaded (so a liveness probe is answered during a long
load, and readiness says what it waits for); the service then `attach`es its consumer, producer, pipeline and
runtimes and runs `sample_forever` beside its pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from aiaas.metrics.endpoint import MetricsEndpoint, close_endpoint, open_endpoint
from aiaas.metrics.pauses import watch_loop_lag
from aiaas.metrics.probes import Health, watch_broker
from aiaas.metrics.serving import ServingMetrics
from aiaas.metrics.targets import TargetFile
from aiaas.serving.pipeline import JobPipeline
from aiaas.serving.runtimes import RuntimeSet
from aiaas.settings import MetricsEndpointSettings

__all__ = ["ServiceMonitor"]

log = logging.getLogger("aiaas.service")

_SAMPLE_S = 1.0
_HEAD_HISTORY_S = 600.0
"""How far back the arrival times of a partition's records are remembered (`_Heads`): beyond it only the oldest
sample is kept, so a record that has waited longer reads as having waited since that sample."""


class ServiceMonitor:
    """Metrics, probes and target file of one service process."""

    def __init__(self, model: str) -> None:
        self.metrics = ServingMetrics(model)
        self.health = Health("starting: loading the model")
        self._endpoint: tuple[MetricsEndpoint, TargetFile] | None = None
        self._heads = _Heads()
        self._swaps = 0
        self._lag_labels: set[tuple[str, str, str]] = set()  # the lag series exported now
        self._failures = 0  # samples that failed

    @classmethod
    def open(cls, model: str, settings: MetricsEndpointSettings, *, home: Path,
             instance: str) -> ServiceMonitor | None:
        """Start the endpoint and write the target file that announces it; None when `metrics_port` is -1 (then
        nothing is recorded either: nobody could read it)."""
        if settings.metrics_port < 0:
            return None
        monitor = cls(model)
        monitor._endpoint = open_endpoint(monitor.metrics.registry, monitor.health, settings, home=home,
                                          role="service", model=model, instance=instance)
        return monitor

    def close(self) -> None:
        """Stop the endpoint and remove the target file."""
        close_endpoint(self._endpoint)
        self._endpoint = None

    async def sample_forever(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, pipeline: JobPipeline,
                             runtimes: RuntimeSet) -> None:
        """Once a second: the gauges, the model version, and readiness; until cancelled. Liveness ticks on a task of
        its own (which also asks the broker every few seconds), so a sample that fails never makes a healthy process
        look dead: it is logged, and the next second samples again."""
        self.metrics.count_pipeline(lambda: pipeline.stats)
        watching = asyncio.create_task(watch_broker(self.health, producer.client.force_metadata_update),
                                       name="aiaas-broker-watch")
        lagging = asyncio.create_task(watch_loop_lag(), name="aiaas-loop-lag")
        try:
            while True:
                try:
                    self.health.waiting_for(None if pipeline.assigned else "joining the consumer group")
                    self._sample_window(consumer, pipeline)
                    await self._sample_lag(consumer, pipeline)
                    self._sample_version(runtimes)
                    self.metrics.sample_drift()
                except Exception:  # noqa: BLE001 - metrics never stop a service
                    self._failures += 1
                    if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
                        log.exception("sampling the metrics failed (%d times so far)", self._failures)
                await asyncio.sleep(_SAMPLE_S)
        finally:
            watching.cancel()
            lagging.cancel()

    def _sample_window(self, consumer: AIOKafkaConsumer, pipeline: JobPipeline) -> None:
        model = self.metrics.model
        jobs, size = pipeline.in_flight
        self.metrics.in_flight.labels(model).set(jobs)
        self.metrics.in_flight_bytes.labels(model).set(size)
        self.metrics.paused.labels(model).set(len(consumer.paused()))
        self.metrics.assigned.labels(model).set(len(consumer.assignment()))

    async def _sample_lag(self, consumer: AIOKafkaConsumer, pipeline: JobPipeline) -> None:
        """Per assigned partition: records not taken yet, and for how long the oldest of them has waited.

        Every head is read before the first await (a rebalance may finish during one: a partition no longer
        assigned is skipped), and the gauges are set only once all are known, the partitions gone removed: a scrape
        never sees the lag series missing."""
        model, now = self.metrics.model, time.time()
        assigned, taken = consumer.assignment(), pipeline.next_offsets()
        heads = {tp: head for tp in assigned if (head := _head(consumer, tp)) is not None}  # None: not fetched yet
        lags: dict[tuple[str, str, str], tuple[int, float]] = {}
        for tp, head in heads.items():
            self._heads.saw(tp, head, now)
            next_offset = taken.get(tp)
            if next_offset is None:
                next_offset = await _position(consumer, tp)
                if next_offset is None or tp not in consumer.assignment():
                    continue
            lags[(model, tp.topic, str(tp.partition))] = (max(0, head - next_offset),
                                                          self._heads.waited(tp, next_offset, now))
        for labels in self._lag_labels - lags.keys():
            self.metrics.lag_records.remove(*labels)
            self.metrics.lag_seconds.remove(*labels)
        for labels, (records, seconds) in lags.items():
            self.metrics.lag_records.labels(*labels).set(records)
            self.metrics.lag_seconds.labels(*labels).set(seconds)
        self._lag_labels = set(lags)
        self._heads.keep_only(assigned)

    def _sample_version(self, runtimes: RuntimeSet) -> None:
        model = self.metrics.model
        self.metrics.version.labels(model).info({"version": runtimes.current.version, "serving": runtimes.serve_ref})
        if runtimes.swaps > self._swaps:
            self.metrics.reloads.labels(model).inc(runtimes.swaps - self._swaps)
            self._swaps = runtimes.swaps


def _head(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The offset after the partition's last readable record (read_committed: its last stable offset)."""
    stable = consumer.last_stable_offset(tp)
    head = stable if stable is not None and stable >= 0 else consumer.highwater(tp)
    return int(head) if head is not None else None


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    try:
        return int(await asyncio.wait_for(consumer.position(tp), 0.5))
    except Exception:  # being reset or revoked: next second
        return None


class _Heads:
    """When each partition's head (high-water mark) first reached each value seen, so the lag in records becomes a
    lag in time: a record at offset `o` arrived no later than the first sample whose head was past `o` (the method
    of kafka-lag-exporter, at one-second resolution)."""

    def __init__(self) -> None:
        self._seen: dict[TopicPartition, deque[tuple[int, float]]] = {}

    def saw(self, tp: TopicPartition, head: int, now: float) -> None:
        """Note the head of a partition at `now` (kept only when it moved)."""
        history = self._seen.setdefault(tp, deque())
        if not history or history[-1][0] != head:
            history.append((head, now))
        while history and now - history[0][1] > _HEAD_HISTORY_S and len(history) > 1:
            history.popleft()

    def waited(self, tp: TopicPartition, next_offset: int, now: float) -> float:
        """Seconds the record at `next_offset` (the oldest not taken) has waited; 0 when there is none."""
        for head, at in self._seen.get(tp, ()):
            if head > next_offset:
                return max(0.0, now - at)
        return 0.0

    def keep_only(self, assigned: set[TopicPartition]) -> None:
        """Forget partitions no longer assigned."""
        for tp in set(self._seen) - assigned:
            del self._seen[tp]
