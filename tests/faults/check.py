"""The checker: at the end of a scenario, read every record of its topics and count per job id.

Reads the jobs, results and DLQ topics from the beginning to their end (read_committed: what a
reader of an exactly-once service can see), and the results reader's `received.txt`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from aiaas.contract.codec import decode_result
from aiaas.contract.topics import ModelTopics, dlq_topic
from aiaas.errors import AiaasError
from aiaas.kafka.admin import partition_count
from aiaas.settings import KafkaSettings

__all__ = ["Check", "check", "read_received"]


@dataclass
class Check:
    """Counts for one scenario run (see the table legend in report.py)."""

    sent: int
    """Good jobs the broker acknowledged."""
    answered: int
    """Good jobs with at least one final result in the results topic."""
    lost: int
    topic_duplicates: int
    """Results beyond one per message published with that key (all job ids, bad inputs included)."""
    client_duplicates: int
    """Lines of received.txt beyond one per job id."""
    dlq: int
    """Records in the DLQ topic."""
    reader_missed: int
    """Good jobs with a result in the topic that the reader never handed over."""
    not_ok: Counter = field(default_factory=Counter)
    """Statuses other than `ok` among the good jobs' results."""
    jobs_topic_duplicates: int = 0
    """Good jobs that reached the jobs topic more than once (publisher resends)."""
    bad_results: int = 0
    """Results for the bad inputs (error results of those whose job id could be told)."""
    undecodable_results: int = 0
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    bad_checked: int = 0
    """Bad inputs whose outcome was checked (`Message.expect_result`)."""
    bad_unexpected: list[str] = field(default_factory=list)
    """Those whose result was not the one expected: `job id: expected …, got …`."""


async def read_all(kafka: KafkaSettings, topic: str, stall_s: float = 30) -> list:
    """Every committed record of `topic`, beginning to end (the end taken when this starts)."""
    consumer = AIOKafkaConsumer(**kafka.connection_kwargs(), group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed",
                                max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(await partition_count(kafka, topic, wait_s=10))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)  # read_committed: the last stable offsets
        records, moved_at = [], time.monotonic()
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() - moved_at > stall_s:
                raise TimeoutError(f"reading {topic} to its end stalled")
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
                moved_at = time.monotonic()
        return records
    finally:
        await consumer.stop()


def read_received(path: Path) -> Counter:
    """Job id → how many times the reader wrote it (an incomplete last line is ignored)."""
    if not path.exists():
        return Counter()
    text = path.read_text(errors="replace")
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete (or empty)
    return Counter(line.split(" ", 1)[0] for line in lines if line)


async def check(kafka: KafkaSettings, good_ids: set[str], sends_per_key: Counter, acked: int,
                received: Path | Counter, *, infer_topics: list[str] | None = None,
                results_topics: list[str] | None = None, expected: dict[str, str] | None = None) -> Check:
    """Count what the topics and the reader hold for one scenario.

    `infer_topics`/`results_topics`: every jobs and results topic of the run (default: the vision ones);
    `received`: the reader's file, or what the run's readers handed over; `expected`: job id → the outcome a
    bad input must end in (`ok` or an error type), checked against its first result.
    """
    topics = ModelTopics.of("vision", kafka.topic_prefix)
    infer_topics, results_topics = infer_topics or [topics.infer], results_topics or [topics.results]
    read = await asyncio.gather(*(read_all(kafka, t) for t in [*infer_topics, *results_topics,
                                                                 dlq_topic(kafka.topic_prefix)]))
    jobs = [r for records in read[:len(infer_topics)] for r in records]
    results = [r for records in read[len(infer_topics):-1] for r in records]
    dead = read[-1]
    per_job = Counter(r.key.decode(errors="replace") for r in jobs if r.key)
    per_result: Counter = Counter()
    not_ok: Counter = Counter()
    first: dict[str, str] = {}
    undecodable = 0
    for record in results:
        try:
            result = decode_result(record.value or b"", kafka.max_message_bytes)
        except AiaasError:
            undecodable += 1
            continue
        per_result[result.job_id] += 1
        first.setdefault(result.job_id, result.error.type if result.error else result.status)
        if result.job_id in good_ids and result.status != "ok":
            not_ok[result.status] += 1
    answered = sum(1 for job_id in good_ids if per_result[job_id])
    duplicate_ids = sorted(k for k, n in per_result.items() if n > max(1, sends_per_key[k]))
    seen = received if isinstance(received, Counter) else read_received(received)
    unexpected = [f"{job_id}: expected {want}, got {first.get(job_id, 'no result')}"
                  for job_id, want in (expected or {}).items() if first.get(job_id) != want]
    return Check(
        sent=acked,
        answered=answered,
        lost=len(good_ids) - answered,
        topic_duplicates=sum(per_result[k] - max(1, sends_per_key[k]) for k in duplicate_ids),
        client_duplicates=sum(n - 1 for n in seen.values() if n > 1),
        dlq=len(dead),
        reader_missed=sum(1 for job_id in good_ids if per_result[job_id] and not seen[job_id]),
        not_ok=not_ok,
        jobs_topic_duplicates=sum(1 for job_id in good_ids if per_job[job_id] > 1),
        bad_results=sum(n for k, n in per_result.items() if k not in good_ids),
        undecodable_results=undecodable,
        lost_ids=sorted(job_id for job_id in good_ids if not per_result[job_id])[:10],
        duplicate_ids=duplicate_ids[:10],
        bad_checked=len(expected or {}),
        bad_unexpected=unexpected,
    )
