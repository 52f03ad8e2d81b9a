"""The load generator's results reader in a process of its own (`RawLoad(reader="process")`).

In the load generator's own process the reader shares one event loop with the publisher: while the publisher keeps
its schedule, a result can sit unread, and the measured latency is partly the generator's. Here a result's receipt
time is taken by a process that does nothing else (it still shares the machine's cores: `bench/procs.py` reports
what each process used). It sends `(key, received_at, status, batch_size)` per result back through a pipe, one
message per fetch. `client="librdkafka"` reads with librdkafka instead (`bench/rdkafka.py`).
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import msgpack
from aiokafka import AIOKafkaConsumer, TopicPartition

from aiaas.settings import KafkaSettings

__all__ = ["read_results", "result_status"]


def read_results(kafka: KafkaSettings, topic: str, partitions: int, results: Connection, stop: Event,
                 client: str = "aiokafka") -> None:
    """Read `topic` from its end until `stop` is set; `"ready"` first, once positioned at the end."""
    if client == "librdkafka":
        from .rdkafka import read_results_librdkafka

        try:
            read_results_librdkafka(kafka, topic, partitions, results.send, stop.is_set, _received)
        finally:
            results.close()
        return
    asyncio.run(_read(kafka, topic, partitions, results, stop))


def _received(key: bytes, at: float, value: bytes) -> tuple[bytes, float, str, int]:
    """What the load generator needs of a result: (key, received at, status, batch size)."""
    return key, at, *result_status(value)


def result_status(value: bytes) -> tuple[str, int]:
    """A result record's status and the size of the batch its job ran in (0 when not reported)."""
    result = msgpack.unpackb(value, raw=False)
    return result["status"], int(result.get("timings", {}).get("batch_size", 0))


async def _read(kafka: KafkaSettings, topic: str, partitions: int, results: Connection, stop: Event) -> None:
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:
            await consumer.position(tp)
        results.send("ready")
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            received = []
            for records in batches.values():
                received += [_received(record.key, now, record.value) for record in records]
            if received:
                results.send(received)
    finally:
        await consumer.stop()
        results.close()
