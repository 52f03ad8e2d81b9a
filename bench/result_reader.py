"""The load generator's results reader in a process of its own (`RawLoad(reader="process")`).

In the load generator's own process the reader shares one event loop with the publisher: while the publisher keeps
its schedule, a result can sit unread, and the measured latency is partly the generator's. Here a result's receipt
time is taken by a process that does nothing else (it still shares the machine's cores: `bench/procs.py` reports
what each process used). It sends `(key, received_at, status, batch_size)` per result back through a pipe, one
message per fetch.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import msgpack
from aiokafka import AIOKafkaConsumer, TopicPartition

from aiaas.settings import KafkaSettings

__all__ = ["read_results"]


def read_results(kafka: KafkaSettings, topic: str, partitions: int, results: Connection, stop: Event) -> None:
    """Read `topic` from its end until `stop` is set; `"ready"` first, once positioned at the end."""
    asyncio.run(_read(kafka, topic, partitions, results, stop))


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
                for record in records:
                    result = msgpack.unpackb(record.value, raw=False)
                    received.append((record.key, now, result["status"],
                                     int(result.get("timings", {}).get("batch_size", 0))))
            if received:
                results.send(received)
    finally:
        await consumer.stop()
        results.close()
