"""What a scenario publishes: real vision jobs (held-out digits), optionally bad inputs between them.

Bad inputs: the hostile corpus (bodies), hostile headers (`hostile_headers`), refused reply topics
(`bad_reply_to`). Each bad message says what it should end in (`expect_result`, `expect_dlq`).

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

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.contract.topics import ModelTopics
from aiaas.settings import KafkaSettings

__all__ = ["Message", "good_jobs", "hostile_messages", "hostile_headers", "bad_reply_to", "interleave", "Publisher",
           "Published"]


@dataclass(frozen=True)
class Message:
    """One record to publish to the jobs topic."""

    key: bytes | None
    value: bytes | None
    good: bool
    """A well-formed vision job (counted in `lost`); False for the bad inputs."""
    name: str = ""
    topic: str | None = None
    """Where it goes: None for the vision infer topic of the run (else e.g. a tenant's infer topic, the retry topic)."""
    headers: tuple[tuple[str, bytes | None], ...] = ()
    expect_result: str | None = None
    """For a bad input whose outcome is checked: `ok`, or the error type its result must carry; None: not checked."""
    expect_dlq: bool = True
    """A bad input that must end as a dead letter (False: one that is served, e.g. an unread header)."""

    @property
    def job_id(self) -> str | None:
        """The job id its result is keyed by (the key, for every message built here), when the key can be one."""
        try:
            return self.key.decode() if self.key else None
        except UnicodeDecodeError:
            return None


def good_jobs(prefix: str, n: int, *, topic: str | None = None, fail_every: int = 0) -> list[Message]:
    """`n` vision jobs, ids `<prefix>-000000`…, images cycling through the held-out digits.

    `fail_every` k > 0: every k-th job asks `tests.integration.flaky_vision` to fail its model call once
    (attribute `fail_times=1`, a retriable ModelFailure); the plain service ignores the attribute.
    """
    from aiaas.vision.data import load_split

    images = [Tensor.from_numpy(image[0]) for image in load_split().test_x]
    out = []
    for i in range(n):
        flaky = {"fail_times": "1"} if fail_every and i % fail_every == fail_every // 2 else {}
        job = Job(job_id=f"{prefix}-{i:06d}", model="vision", inputs={"image": images[i % len(images)]},
                  attributes=flaky)
        out.append(Message(job.job_id.encode(), encode(job), True, "digit" + ("-flaky" if flaky else ""), topic))
    return out


def _bytes(value: object) -> bytes | None:
    return value.encode() if isinstance(value, str) else value  # type: ignore[return-value]


def hostile_messages(prefix: str) -> list[Message]:
    """The project's hostile corpus (tests/hostile_corpus.py) for the vision jobs topic."""
    from tests.hostile_corpus import hostile_messages as corpus

    corpus_messages = corpus(model="vision", prefix_job_id=prefix)
    return [Message(_bytes(m.key), _bytes(m.value), False, m.name) for m in corpus_messages]


def _job(job_id: str, **fields: object) -> bytes:
    """A valid vision job envelope with `fields` replaced (msgpack written directly: any value goes)."""
    import msgpack

    from tests.hostile_corpus import good_vision_job

    envelope = msgpack.unpackb(good_vision_job("placeholder")) | {"job_id": job_id} | fields
    return msgpack.packb(envelope, use_bin_type=True)


def hostile_headers(prefix: str, retry_topic: str, rounds: int = 3) -> list[Message]:
    """Good job bodies under headers a buggy or hostile publisher can send, `rounds` of each case.

    Headers aiaas reads (W3C trace context, `aiaas.*`) that are null, not text, junk or repeated, and too
    many headers, end as InvalidHeaders (error result + dead letter); on the retry topic too, where the
    retry headers themselves are missing or null. Headers aiaas does not read are the publisher's business:
    a null value or a key with control characters there leaves the job to be served (`ok`). A record key with
    control characters cannot be a job id: with a body whose job id is one too, only a dead letter.
    """
    zeros = "00-" + "0" * 32 + "-" + "0" * 16 + "-01"
    valid = "00-" + "4bf92f3577b34da6a3ce929d0e0e4736" + "-" + "00f067aa0ba902b7" + "-01"
    cases: list[tuple[str, list, str | None, str | None]] = [  # name, headers, topic, expected result
        ("null-traceparent", [("traceparent", None)], None, "InvalidHeaders"),
        ("null-attempt", [("aiaas.attempt", None)], None, "InvalidHeaders"),
        ("null-attempt-on-retry", [("aiaas.attempt", None), ("aiaas.retry.not_before", b"nan")], retry_topic,
         "InvalidHeaders"),
        ("retry-without-headers", [], retry_topic, "InvalidHeaders"),
        ("non-utf8-aiaas", [("aiaas.origin.topic", b"\xff\xfe\xfd")], None, "InvalidHeaders"),
        ("non-utf8-traceparent", [("traceparent", b"\xff\xfe junk")], None, "InvalidHeaders"),
        ("junk-traceparent", [("traceparent", b"not-a-traceparent")], None, "InvalidHeaders"),
        ("zero-traceparent", [("traceparent", zeros.encode())], None, "InvalidHeaders"),
        ("two-traceparents", [("traceparent", valid.encode()), ("traceparent", valid.encode())], None,
         "InvalidHeaders"),
        ("junk-tracestate", [("traceparent", valid.encode()), ("tracestate", b"k=" + b"v" * 600)], None,
         "InvalidHeaders"),
        ("control-tracestate", [("tracestate", b"k=\x01\x1b[31m")], None, "InvalidHeaders"),
        ("junk-baggage", [("baggage", b"\x00" * 10)], None, "InvalidHeaders"),
        ("huge-baggage", [("baggage", b"k=" + b"v" * 9000)], None, "InvalidHeaders"),
        ("control-aiaas-value", [("aiaas.note", b"a\x00b\x1b")], None, "InvalidHeaders"),
        ("thousands-of-headers", [(f"h{i}", b"x") for i in range(5000)], None, "InvalidHeaders"),
        ("control-header-key", [("x-\x00\x07\x1b[31m", b"v")], None, "ok"),
        ("control-aiaas-key", [("aiaas.\x07bell\n", b"1")], None, "ok"),
        ("null-unread-header", [("x-custom", None)], None, "ok"),
    ]
    out = []
    for r in range(rounds):
        for name, headers, topic, expected in cases:
            job_id = f"{prefix}-{name}-{r}"
            out.append(Message(job_id.encode(), _job(job_id), False, name, topic, tuple(headers), expected,
                               expected != "ok"))
        job_id = f"{prefix}-control-key-{r}"  # key and job id with control characters: no id to answer, a dead letter
        out.append(Message(f"{job_id}\x00\x1b".encode(), _job(f"{job_id}\x00\x1b"), False, "control-key",
                           expect_result=None))
    return out


def bad_reply_to(prefix: str, topic_prefix: str, rounds: int = 3) -> list[Message]:
    """Jobs whose reply_to the service must refuse: each gets a RefusedReplyTo result and a dead letter.

    `.` and `..`, the dead-letter topic, another model type's results topic, and a results topic of this
    model that nobody created (the broker creates none by itself).
    """
    targets = {"dot": ".", "dotdot": "..", "dlq": f"{topic_prefix}.dlq", "text-results": f"{topic_prefix}.text.results",
               "nobody": f"{topic_prefix}.vision.results.nobody"}
    out = []
    for r in range(rounds):
        for name, reply_to in targets.items():
            job_id = f"{prefix}-reply-to-{name}-{r}"
            out.append(Message(job_id.encode(), _job(job_id, reply_to=reply_to), False, f"reply-to-{name}",
                               expect_result="RefusedReplyTo"))
    return out


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
        self.sent_at: dict[bytes | None, float] = {}
        """Key → when its first send started (wall clock, as alice's process says when her flood began)."""

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
        self.sent_at.setdefault(message.key, time.time())
        while True:
            try:
                return await producer.send(message.topic or self.topic, message.value, key=message.key,
                                           headers=list(message.headers) or None)
            except KafkaError as exc:  # no metadata while the broker is away
                self._error(exc)
                await asyncio.sleep(0.5)

    async def _resend(self, producer: AIOKafkaProducer, message: Message, exc: BaseException) -> None:
        while True:
            self._error(exc)
            self.stats.resends += 1
            await asyncio.sleep(0.5)
            try:
                await (await producer.send(message.topic or self.topic, message.value, key=message.key,
                                           headers=list(message.headers) or None))
                return
            except KafkaError as again:
                exc = again

    def _error(self, exc: BaseException) -> None:
        if len(self.stats.errors) < 5:
            self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
