"""librdkafka (confluent-kafka) for the load generator: a producer with aiokafka's `send` shape, and a results reader.

The load generator stands for upstream systems and result readers, which in a deployment run on machines of their
own. Here it shares the cores with the service under test and the broker, so what it costs per job is taken from
them. librdkafka, the C client most Kafka publishers and consumers in the field run on (Java's aside), batches,
writes, fetches and parses records in C threads; `RawLoad(client="librdkafka")` uses it for the same records, acks,
idempotence, linger and partitioner as the aiokafka generator (`bench/load.py`), and `bench/ab.py` meters what each
costs per job.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiaas.settings import KafkaSettings

__all__ = ["CLIENTS", "producer_config", "RdkafkaProducer", "read_results_librdkafka"]

CLIENTS = ("aiokafka", "librdkafka")
"""The Kafka clients the benchmarks' load generators publish (and read) with."""

_CLIENT_ID = "aiaas-bench-load"
_REPORTS_EVERY_S = 0.05
"""The longest the delivery-report thread blocks in one poll (it returns at once when a report comes)."""


def producer_config(kafka: KafkaSettings, client_id: str, *, linger_ms: int) -> dict[str, object]:
    """librdkafka's configuration for a producer sent to as the aiokafka ones here are: acks=all, idempotent, and
    aiokafka's (Java's) partitioner, so a key goes to the partition it goes to there."""
    return kafka.librdkafka_config(client_id) | {
        "acks": "all", "enable.idempotence": True, "linger.ms": linger_ms, "partitioner": "murmur2_random"}


class RdkafkaProducer:
    """librdkafka's producer, sent to like aiokafka's: `await send(...)` queues the record and returns a future that the
    broker's acknowledgement resolves (in the event loop, as aiokafka's are). A thread serves librdkafka's delivery
    reports and hands each poll's worth to the loop in one call."""

    def __init__(self, kafka: KafkaSettings, *, linger_ms: int, max_request_size: int) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(producer_config(kafka, _CLIENT_ID, linger_ms=linger_ms) | {
            "message.max.bytes": max_request_size, "queue.buffering.max.messages": 1_000_000})
        self._reports: deque[tuple[asyncio.Future[None], Any]] = deque()
        self._unsettled: set[asyncio.Future[None]] = set()  # sent, no report handed to the loop yet (loop only)
        self._broken: BaseException | None = None  # what ended the report thread, if it failed
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, name="librdkafka-reports", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Connect (the metadata of every topic fetched) before this returns, as aiokafka's `start` does."""
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(None, lambda: self._producer.list_topics(timeout=30))
        self._thread.start()

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[None]:
        """Queue the record; the returned future ends when the broker acknowledged it (or raises what it said)."""
        assert self._loop is not None, "start() first"
        if self._broken is not None:
            raise RuntimeError("librdkafka's delivery reports stopped") from self._broken
        acknowledged: asyncio.Future[None] = self._loop.create_future()
        self._unsettled.add(acknowledged)

        def delivered(error: Any, _message: Any) -> None:  # in the report thread
            self._reports.append((acknowledged, error))

        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=delivered)
                return acknowledged
            except BufferError:  # its queue is full: let it send
                await asyncio.sleep(0.001)

    async def stop(self) -> None:
        """Wait for every queued record's acknowledgement, then stop the report thread."""
        loop = asyncio.get_running_loop()
        self._stopping.set()
        if self._thread.is_alive():
            await loop.run_in_executor(None, self._thread.join)
        left = await loop.run_in_executor(None, self._producer.flush, 30)
        self._settle()
        if left:
            error = RuntimeError(f"{left} records were not acknowledged within 30 s")
            self._fail_unsettled(error)
            raise error

    def _serve_reports(self) -> None:
        assert self._loop is not None
        try:
            while not self._stopping.is_set():
                self._producer.poll(_REPORTS_EVERY_S)
                if self._reports:
                    self._loop.call_soon_threadsafe(self._settle)
        except BaseException as exc:  # noqa: BLE001 - whatever ended it fails every pending send, never hangs them
            self._broken = exc
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._fail_unsettled, exc)
            raise

    def _settle(self) -> None:
        """Resolve the futures of the reports served so far (in the loop)."""
        from confluent_kafka import KafkaException

        while self._reports:
            future, error = self._reports.popleft()
            self._unsettled.discard(future)
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(KafkaException(error))

    def _fail_unsettled(self, error: BaseException) -> None:
        """Every send still waiting for its report ends with `error` (in the loop)."""
        for future in self._unsettled:
            if not future.done():
                future.set_exception(error)
        self._unsettled.clear()


def read_results_librdkafka(kafka: KafkaSettings, topic: str, partitions: int,
                            received: Callable[[Any], None], stop: Callable[[], bool],
                            handle: Callable[[bytes, float, bytes], Any]) -> None:
    """Read `topic` from its end with librdkafka until `stop()`: `received("ready")` once positioned, then per fetch
    `received([handle(key, at, value), ...])`. A receipt is timed when the first record of a poll comes."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(kafka.librdkafka_config(f"{_CLIENT_ID}-reader") | {
        "group.id": f"aiaas-bench-reader-{uuid.uuid4().hex}",  # required by the client; never joined (assign only)
        "enable.auto.commit": False, "isolation.level": "read_uncommitted",
        "fetch.message.max.bytes": kafka.max_message_bytes + 64 * 1024})
    try:
        ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)]
        consumer.assign([TopicPartition(topic, p, end) for p, end in enumerate(ends)])
        received("ready")
        while not stop():
            first = consumer.poll(0.1)
            if first is None:
                continue
            now = time.time()
            batch = [first, *consumer.consume(num_messages=10_000, timeout=0)]  # whatever else has come, no wait
            out = []
            for message in batch:
                if (error := message.error()) is None:
                    out.append(handle(message.key(), now, message.value()))
                elif error.fatal():
                    raise KafkaException(error)
                else:  # e.g. a broker that went away for a moment: librdkafka retries by itself
                    print(f"results reader: {error}", file=sys.stderr, flush=True)
            if out:
                received(out)
    finally:
        consumer.close()
