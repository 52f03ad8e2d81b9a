"""What a scenario publishes: real vision jobs (held-out digits), optionally the hostile corpus between them.

The publisher is a plain aiokafka producer with the client's settings (acks=all, idempotent),
paced at a fixed rate so that faults land in the middle of a stream rather than after a burst.
A send that fails (the broker is away) is sent again until the broker takes it; those resends
are counted, and the checker counts any job that reached the jobs topic twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from aiaas.codec import encode
from aiaas.contracts import Job, Tensor
from aiaas.settings import KafkaSettings
from aiaas.topics import ModelTopics

__all__ = ["Message", "good_jobs", "hostile_messages", "interleave", "Publisher", "Published"]


@dataclass(frozen=True)
class Message:
    """One record to publish to the jobs topic."""

    key: bytes | None
    value: bytes | None
    good: bool
    """A well-formed vision job (counted in `lost`); False for the hostile corpus."""
    name: str = ""


def good_jobs(prefix: str, n: int) -> list[Message]:
    """`n` vision jobs, ids `<prefix>-000000`…, images cycling through the held-out digits."""
    from aiaas.vision.data import load_split

    images = [Tensor.from_numpy(image[0]) for image in load_split().test_x]
    out = []
    for i in range(n):
        job = Job(job_id=f"{prefix}-{i:06d}", model="vision", inputs={"image": images[i % len(images)]})
        out.append(Message(job.job_id.encode(), encode(job), True, "digit"))
    return out


def _bytes(value: object) -> bytes | None:
    return value.encode() if isinstance(value, str) else value  # type: ignore[return-value]


def hostile_messages(prefix: str) -> list[Message]:
    """The project's hostile corpus (tests/hostile_corpus.py) for the vision jobs topic."""
    from tests.hostile_corpus import hostile_messages as corpus

    corpus_messages = corpus(model="vision", prefix_job_id=prefix)
    return [Message(_bytes(m.key), _bytes(m.value), False, m.name) for m in corpus_messages]


def interleave(good: list[Message], bad: list[Message]) -> list[Message]:
    """The bad messages spread evenly between the good ones (none first, none last)."""
    out, step = [], len(good) / (len(bad) + 1)
    slots = {int(step * (k + 1)): [] for k in range(len(bad))}
    for k, message in enumerate(bad):
        slots[int(step * (k + 1))].append(message)
    for i, message in enumerate(good):
        out.extend(slots.get(i, []))
        out.append(message)
    return out


@dataclass
class Published:
    """What the publisher got the broker to take."""

    acked: int = 0
    good_acked: int = 0
    """Of which good jobs."""
    resends: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    errors: list[str] = field(default_factory=list)


class Publisher:
    """Paced publishing to `<prefix>.vision.infer`, riding through broker outages by sending again."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.topic = ModelTopics.of("vision", kafka.topic_prefix).infer
        self.stats = Published()

    async def run(self, messages: list[Message], rate: float, chunk: int = 100) -> Published:
        """Publish every message at `rate` per second; returns once the broker has them all."""
        producer = AIOKafkaProducer(**self.kafka.connection_kwargs(), acks="all", enable_idempotence=True,
                                    linger_ms=2, max_request_size=self.kafka.max_message_bytes + 64 * 1024)
        await producer.start()
        try:
            start = time.monotonic()
            self.stats.first_at = time.time()
            for first in range(0, len(messages), chunk):
                part = messages[first:first + chunk]
                pending = []
                for i, message in enumerate(part, first):
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    pending.append((message, await self._send(producer, message)))
                for message, ack in pending:
                    try:
                        await ack
                    except KafkaError as exc:
                        await self._resend(producer, message, exc)
                    self.stats.acked += 1
                    self.stats.good_acked += message.good
            self.stats.last_at = time.time()
            return self.stats
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, message: Message) -> asyncio.Future:
        while True:
            try:
                return await producer.send(self.topic, message.value, key=message.key)
            except KafkaError as exc:  # no metadata while the broker is away
                self._error(exc)
                await asyncio.sleep(0.5)

    async def _resend(self, producer: AIOKafkaProducer, message: Message, exc: BaseException) -> None:
        while True:
            self._error(exc)
            self.stats.resends += 1
            await asyncio.sleep(0.5)
            try:
                await (await producer.send(self.topic, message.value, key=message.key))
                return
            except KafkaError as again:
                exc = again

    def _error(self, exc: BaseException) -> None:
        if len(self.stats.errors) < 5:
            self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
