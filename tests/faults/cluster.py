"""A local 3-node Kafka cluster (`infra/kafka/kafka.sh cluster ...`) for the fault suite, and who leads what.

    cluster = LocalCluster(29802, workdir / "cluster")
    await cluster.start_async()                    # nodes on 29802, 29807, 29812 (controllers on port + 1)
    node = await cluster.leader_of("t.vision.infer", 0)
    await cluster.kill_node(node)                  # kill -9: a crash
    await cluster.start_node(node)                 # same data; kafka.sh waits until it answers
    await cluster.wait_in_sync([...topics...])     # every replica back in the ISR

Three combined broker + controller nodes (a static quorum of the three), topics replicated 3 times with
min.insync.replicas=2: one node may be down at a time without losing an acknowledged record. It offers what
the scenarios use of `tests.harness.LocalBroker` (`bootstrap`, `running`, `start_async`, `stop_async`,
`stop`), so a scenario runs on either; `replication_factor` says how to create topics on it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from tests import harness
from tests.harness import KAFKA_SH

__all__ = ["LocalCluster", "NODES"]

NODES = (1, 2, 3)
_NODE_STRIDE = 5
"""Node N's client port is the base port + 5 × (N − 1), as kafka.sh places it (controller on + 1)."""


class LocalCluster:
    """`infra/kafka/kafka.sh cluster start|stop|kill N|start N` on its own base port and state dir."""

    replication_factor = 3

    def __init__(self, port: int, state_dir: Path) -> None:
        self.port, self.state_dir = port, state_dir
        self.ports = {node: port + _NODE_STRIDE * (node - 1) for node in NODES}
        self.bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.ports.values())
        self._env = os.environ | {"AIAAS_KAFKA_PORT": str(port), "AIAAS_KAFKA_STATE_DIR": str(state_dir)}

    def __repr__(self) -> str:
        return f"LocalCluster({self.bootstrap})"

    def pid(self, node: int) -> int | None:
        """Node `node`'s JVM process id (from kafka.sh's pid file), None when it has none."""
        try:
            return int((self.state_dir / f"node{node}" / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    def alive(self, node: int) -> bool:
        """Node `node` runs now."""
        pid = self.pid(node)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    @property
    def running(self) -> bool:
        """All three nodes run."""
        return all(self.alive(node) for node in NODES)

    def log_path(self, node: int) -> Path:
        return self.state_dir / f"node{node}" / "kafka.log"

    async def _kafka_sh(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(str(KAFKA_SH), "cluster", *args, env=self._env,
                                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = (await proc.communicate())[0].decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh cluster {' '.join(args)} failed (base port {self.port}):\n{out[-5000:]}")
        return out

    async def start_async(self) -> LocalCluster:
        """Start every node that is not running (formatting each the first time); kafka.sh waits until they answer."""
        if self not in harness._live:  # stopped by harness.stop_all() (at exit too), like its brokers
            harness._live.append(self)
        await self._kafka_sh("start")
        return self

    async def stop_async(self) -> None:
        """Controlled shutdown of every node."""
        await self._kafka_sh("stop")

    def stop(self) -> None:
        """`stop_async` for `harness.stop_all()`."""
        subprocess.run([str(KAFKA_SH), "cluster", "stop"], env=self._env, capture_output=True)

    async def kill_node(self, node: int) -> None:
        """kill -9 node `node` (no controlled shutdown: its partitions lose their leader until the controller
        fences it, broker.session.timeout.ms = 9 s, or it comes back)."""
        await self._kafka_sh("kill", str(node))

    async def stop_node(self, node: int) -> None:
        """Controlled shutdown of node `node` (it hands its leaderships over first)."""
        await self._kafka_sh("stop", str(node))

    async def start_node(self, node: int) -> None:
        """Start node `node` again (same data); returns once it answers."""
        await self._kafka_sh("start", str(node))

    async def describe(self, topics: list[str]) -> dict[tuple[str, int], tuple[int, list[int], list[int]]]:
        """(topic, partition) → (leader, replicas, ISR) of the topics that exist (-1: no leader now)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            found = {}
            for topic in await admin.describe_topics(topics):
                if topic["error_code"]:
                    continue
                for part in topic["partitions"]:
                    found[(topic["topic"], part["partition"])] = (part["leader"], list(part["replicas"]),
                                                                  list(part["isr"]))
            return found
        finally:
            await admin.close()

    async def leader_of(self, topic: str, partition: int, timeout: float = 30) -> int:
        """The node that leads `topic`'s `partition` now (waits while it has none, e.g. right after a creation)."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.describe([topic])
            leader = found.get((topic, partition), (-1, [], []))[0]
            if leader in NODES:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} partition {partition} has no leader after {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def led_by(self, node: int, topics: list[str]) -> list[str]:
        """The partitions of `topics` that `node` leads now, as `topic/partition`."""
        found = await self.describe(topics)
        return [f"{topic}/{partition}" for (topic, partition), (leader, _, _) in sorted(found.items())
                if leader == node]

    async def wait_in_sync(self, topics: list[str], timeout: float = 120) -> bool:
        """Wait until every partition of `topics` has a leader and all its replicas in the ISR; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = await self.describe(topics)
            except Exception:  # a node is still coming up: ask again
                found = {}
            if found and all(leader in NODES and set(isr) == set(replicas)
                             for leader, replicas, isr in found.values()):
                return True
            await asyncio.sleep(0.5)
        return False
