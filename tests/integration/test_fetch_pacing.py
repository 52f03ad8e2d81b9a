"""`FetchPacing` on a real aiokafka consumer against the real broker: the fetcher has the attributes it sets, and a
paced fetch that never reaches its minimum still comes back with the record it has."""

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiaas.kafka.admin import ensure_topics
from aiaas.kafka.fetcher import FetchPacing


async def test_a_paced_consumer_still_gets_a_lone_record_and_its_fetches_get_their_own_settings_back(kafka_settings):
    topic = f"{kafka_settings.topic_prefix}.paced"
    await ensure_topics(kafka_settings, [topic])
    consumer = AIOKafkaConsumer(topic, **kafka_settings.connection_kwargs(), group_id=f"paced-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50)
    producer = AIOKafkaProducer(**kafka_settings.connection_kwargs())
    await consumer.start()
    await producer.start()
    try:
        pacing = FetchPacing(consumer, max_batch=32, hold_ms=10)
        pacing.busy(True, 1000.0)  # a batch's worth is 32 kB: the one small record below never reaches it
        fetcher = consumer._fetcher
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (32_000, 10)
        await producer.send_and_wait(topic, b"alone", key=b"k")
        got = []
        for _ in range(100):  # each poll waits up to 100 ms; the held fetch comes back after 10 ms with the record
            got += [r.value for records in (await consumer.getmany(timeout_ms=100)).values() for r in records]
            if got:
                break
        assert got == [b"alone"]
        pacing.busy(False)
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 50)
    finally:
        await producer.stop()
        await consumer.stop()
