"""A results reader that resumes: consumer-group offsets and a SeenFile across a kill -9 (real broker)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from aiaas.client.client import AiaasClient, SeenFile
from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Result
from aiaas.contract.topics import ModelTopics
from aiaas.kafka.admin import ensure_topics
from tests.faults.check import read_received

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def publish_results(settings, job_ids: list[str]) -> None:
    """Final results for `job_ids` on the vision results topic, as a service would publish them."""
    topic = ModelTopics.of("vision", settings.topic_prefix).results
    await ensure_topics(settings, [topic])
    producer = AIOKafkaProducer(**settings.connection_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, encode(Result(job_id=j, model="vision", status="ok")), key=j.encode())
                for j in job_ids]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_group(settings, group: str, count: int, seen=None) -> list[str]:
    """Job ids of the first `count` results a group reader hands over (then it stops: a clean close)."""
    ids: list[str] = []
    async with AiaasClient(settings) as client:
        async for result in client.results("vision", group_id=group, seen=seen, idle_timeout=10):
            ids.append(result.job_id)
            if len(ids) == count:
                break
    return ids


async def test_a_group_reader_resumes_after_its_last_commit(kafka_settings):
    ids = [f"job-{i:03d}" for i in range(200)]
    await publish_results(kafka_settings, ids)
    first = await read_group(kafka_settings, "readers", 120)
    rest = await read_group(kafka_settings, "readers", 80)
    assert sorted(first + rest) == ids  # the close committed what was handed over: nothing twice, nothing skipped
    assert sorted(await read_group(kafka_settings, "another-group", 200)) == ids  # a new group starts at the beginning


async def test_seen_ids_are_skipped_and_recorded(kafka_settings, tmp_path):
    ids = [f"job-{i:03d}" for i in range(50)]
    await publish_results(kafka_settings, ids + ids[:10])  # ten redelivered duplicates
    with SeenFile(tmp_path / "seen") as seen:
        seen.add("job-007")
        handed = await read_group(kafka_settings, "g", 49, seen=seen)
    assert sorted(handed) == [i for i in ids if i != "job-007"]
    assert set(SeenFile(tmp_path / "seen")) == set(ids)


def reader(env: dict[str, str], folder: Path) -> subprocess.Popen:
    log = (folder / "reader.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "tests.faults.reader", "--group", "app", "--dir", str(folder)],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


async def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.slow  # the resumed reader waits for the killed one's group session to expire (10 s)
async def test_a_reader_killed_mid_stream_resumes_and_sees_every_result_once(kafka_settings, tmp_path):
    env = os.environ | {"AIAAS_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
                        "AIAAS_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix, "PYTHONUNBUFFERED": "1"}
    ids = [f"job-{i:04d}" for i in range(1000)]
    received = tmp_path / "received.txt"
    await publish_results(kafka_settings, ids[:500])
    proc = reader(env, tmp_path)
    try:
        # Kill it as soon as it has handed over some: most of what it read is not committed yet (every 1 s).
        await wait_for(lambda: sum(read_received(received).values()) >= 250)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = read_received(received)
        assert 250 <= len(before) < 1000
        await publish_results(kafka_settings, ids[500:] + ids[:100])  # the rest, and 100 redelivered results
        proc = reader(env, tmp_path)
        await wait_for(lambda: set(ids) <= read_received(received).keys())
        await asyncio.sleep(1.5)  # anything it would hand over twice has arrived by now
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    counts = read_received(received)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:5]
    starts = re.findall(r"group app, (\d+) job ids already seen", (tmp_path / "reader.log").read_text())
    assert len(starts) == 2 and int(starts[1]) >= len(before)  # the second reader started from the seen file
