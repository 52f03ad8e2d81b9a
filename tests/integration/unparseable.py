"""Publishing a record that aiokafka's consumer cannot parse: a header key that is not UTF-8.

Java and librdkafka clients cannot even write one; aiokafka's pure-Python record builder writes whatever a key's
`encode()` returns, so a child process with its C extensions off can.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

__all__ = ["publish_unparseable"]

_UNPARSEABLE_PRODUCER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

class NotUtf8(str):
    # aiokafka's pure-Python record builder (AIOKAFKA_NO_EXTENSIONS=1) writes what encode() returns.
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe-not-utf-8"

async def main(servers, topic, partition, key, value):
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=partition, headers=[(NotUtf8("x"), b"v")])
    finally:
        await producer.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode(), bytes.fromhex(sys.argv[5])))
"""


async def publish_unparseable(settings, topic: str, *, key: str, value: bytes, partition: int = 0) -> None:
    """One record whose header key is not UTF-8 (a Java or librdkafka client cannot even write one; a raw one can)."""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _UNPARSEABLE_PRODUCER, settings.bootstrap_servers, topic,
                         str(partition), key, value.hex()],
        env={"AIOKAFKA_NO_EXTENSIONS": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
