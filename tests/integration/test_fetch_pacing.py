"""`FetchPacing` on a real aiokafka consumer against the real broker: the fetch requests the client sends carry the
paced minimum and wait, a paced fetch that never reaches its minimum still comes back with the record it has, and the
consumer's own settings come back after."""

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.kafka.admin import ensure_topics
from aiaas.kafka.fetcher import FetchPacing


def sent_fetches(consumer: AIOKafkaConsumer) -> list[tuple[int, int]]:
    """From now on, the (min_bytes, max_wait_ms) of every fetch request the consumer's client sends."""
    client, seen = consumer._client, []
    send = client.send

    async def recording_send(node_id, request, *args, **kwargs):
        if type(request).__name__ == "FetchRequest":
            seen.append((request._min_bytes, request._max_wait_ms))
        return await send(node_id, request, *args, **kwargs)

    client.send = recording_send
    return seen


async def test_paced_fetches_carry_the_batch_minimum_and_the_hold_and_still_bring_a_lone_record(kafka_settings):
    topic = f"{kafka_settings.topic_prefix}.paced"
    await ensure_topics(kafka_settings, [topic])
    consumer = AIOKafkaConsumer(topic, **kafka_settings.connection_kwargs(), group_id=f"paced-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50)
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await consumer.start()
    await producer.start()
    try:
        fetches = sent_fetches(consumer)
        pacing = FetchPacing(consumer, max_batch=32, hold_ms=10)
        pacing.pace(True, 1000.0)  # a batch's worth is 32 kB: the one small record below never reaches it
        got: list[bytes] = []
        for _ in range(100):  # each poll waits up to 100 ms
            got += [r.value for records in (await consumer.getmany(timeout_ms=100)).values() for r in records]
            if (32_000, 10) in fetches and not got:
                await producer.send_and_wait(topic, b"alone", key=b"k")  # once a paced fetch has gone out
            if got:
                break
        assert got == [b"alone"]
        assert (32_000, 10) in fetches
        pacing.pace(False)
        fetches.clear()
        for _ in range(20):
            await consumer.getmany(timeout_ms=100)
            if fetches:
                break
        assert fetches and set(fetches) == {(1, 50)}  # the consumer's own settings again
    finally:
        await producer.stop()
        await consumer.stop()
