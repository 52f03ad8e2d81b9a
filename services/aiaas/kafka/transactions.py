"""Exactly-once mode: consume → infer → produce in one Kafka transaction per batch.

Each batch's results, dead letters and retry records, and the consumer offsets the batch
makes safe, are written in one transaction (`send_offsets_to_transaction`). Readers that use
`read_committed` (the aiaas client always does) see a batch's results only once its offsets
are committed with them, so a crash at any point either shows the whole batch once or
nothing of it — and then the jobs run again and their results are committed once.

Transactions run one at a time on the service's single transactional producer, in batch
order; the next batch can still be in the model meanwhile. A transaction whose commit fails
without fencing us (a send in it failed, the coordinator went away) is aborted at once: the
producer could begin no other transaction before, and the pipeline runs those jobs again.

The transactional id is `<group>.<instance_id>`: a restarted replica with the same instance
id fences its predecessor (its zombie's transaction is aborted and its producer can no longer
write). Two live replicas must therefore never share one, or each start fences the other and
both stop. Across hosts that takes distinct instance ids (the default, the host name, is one
per host; a StatefulSet ordinal is one per pod). On one host, where the host name is shared,
`claim_transactional_id` decides, holding a host-wide lock named after the cluster and the id
for as long as the process lives (Linux: an abstract Unix socket, scoped like the host name to
a network namespace, so containers on the host network see each other; elsewhere a lock file
in the temp folder):
- an instance id the operator set (`AIAAS_<MODEL>_INSTANCE_ID`) names one replica: a second
  live process with it on this host is a configuration mistake, and it refuses to start
  (`TransactionalIdInUse`, exit status 2) instead of fencing the first;
- the default instance id is numbered: the first of `<group>.<host>`, `<group>.<host>.1`, …
  that no live process on this host holds. Replicas on one host just work, and a replica
  restarted after a crash takes the lowest free number, which is the one a dead replica left,
  so its open transaction is aborted and its zombie fenced as with an explicit id.
Deriving the id from the assigned partitions instead (one transactional producer per input
partition, the pre-KIP-447 Kafka Streams design) fences zombies per partition, but a batch
spans partitions and would need one transaction per partition: not worth it while the
host-wide lock covers the one case the host-name default gets wrong.

A limit to know: aiokafka's `send_offsets_to_transaction` does not send the consumer
group's generation (KIP-447), so the broker fences by transactional id only and would take
the transaction of a replica that stalled past its session and woke after its partitions
moved (a zombie). The pipeline guards against that itself: a replica whose event loop stood
still longer than its session (less one heartbeat) aborts what it holds and rejoins the group
before it takes another record (`stall_watch.py`), and a revocation that comes after the group
dropped it commits nothing. What is left is a freeze that falls between that last check and
the commit request leaving the process (microseconds of every transaction); give every replica
a stable, distinct instance id (a StatefulSet ordinal, say) so a restart fences it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)

from aiaas.errors import TransactionalIdInUse, TransactionFenced
from aiaas.kafka.commit_window import Partition

__all__ = [
    "TransactionalIdClaim", "Transactions", "TransactionalProducer",
    "claim_transactional_id", "transactional_id",
]

log = logging.getLogger("aiaas.exactly_once")

_FATAL = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)


_MAX_NUMBER = 1024
"""Replicas numbered on one host with the default instance id, at most (far more than a host can serve)."""


def transactional_id(group: str, instance_id: str, number: int = 0) -> str:
    """The transactional id of one replica of a service (`number`: its place among those sharing the default
    instance id on one host; 0, the first, has none)."""
    return f"{group}.{instance_id}" + (f".{number}" if number else "")


class TransactionalIdClaim:
    """A transactional id this process holds on this host until `release()` (or its exit)."""

    def __init__(self, transactional_id: str, lock: socket.socket | int) -> None:
        self.id = transactional_id
        self._lock: socket.socket | int | None = lock

    def release(self) -> None:
        """Let another process on this host claim the id (idempotent)."""
        lock, self._lock = self._lock, None
        if isinstance(lock, socket.socket):
            lock.close()
        elif lock is not None:
            os.close(lock)  # closing the descriptor drops its flock

    def __enter__(self) -> TransactionalIdClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def claim_transactional_id(group: str, instance_id: str, *, cluster: str, numbered: bool) -> TransactionalIdClaim:
    """Hold this replica's transactional id on `cluster` (its bootstrap servers) against other processes on this host.

    `numbered` (the instance id is the default, the host name): the first free of `<group>.<instance_id>`,
    `<group>.<instance_id>.1`, …. Otherwise `<group>.<instance_id>` or `TransactionalIdInUse`.
    """
    for number in range(_MAX_NUMBER if numbered else 1):
        candidate = transactional_id(group, instance_id, number)
        lock = _hold(f"{cluster}\n{candidate}")
        if lock is not None:
            if number:
                log.info("instance id %r is in use by %d other replica(s) on this host: transactional id %s",
                         instance_id, number, candidate)
            return TransactionalIdClaim(candidate, lock)
    if numbered:
        raise TransactionalIdInUse(f"{_MAX_NUMBER} replicas of {group} on this host already use instance id "
                                   f"{instance_id!r}; set AIAAS_<MODEL>_INSTANCE_ID")
    raise TransactionalIdInUse(
        f"another process on this host is already serving {group} with instance id {instance_id!r} in exactly-once "
        f"mode (transactional id {candidate}); two replicas sharing it would fence each other. Give each replica its "
        "own AIAAS_<MODEL>_INSTANCE_ID, or leave it unset to number the replicas of this host"
    )


def _hold(name: str) -> socket.socket | int | None:
    """Take the host-wide lock `name`: the held lock, or None when another live process holds it."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    if sys.platform.startswith("linux"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0aiaas-txn-{digest}")  # abstract: no file, gone with the process, shared by the netns
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return None
            raise
        return sock
    import fcntl  # POSIX only; imported here so the module still imports where there is none

    fd = os.open(Path(tempfile.gettempdir()) / f"aiaas-txn-{digest}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class TransactionalProducer(Protocol):
    """The parts of aiokafka's AIOKafkaProducer (with a transactional_id) used here."""

    async def begin_transaction(self) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...
    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None: ...


class Transactions:
    """One transaction per batch, one after another, committing the batch's offsets with its outputs."""

    def __init__(self, producer: TransactionalProducer, group_id: str) -> None:
        self._producer = producer
        self._group = group_id
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[Transactions]:
        """Begin a transaction; commit it when the block ends, abort it if the block raises."""
        async with self._lock:
            await self._call(self._producer.begin_transaction)
            try:
                yield self
            except BaseException:
                await self._abort()
                raise
            try:
                await self._call(self._producer.commit_transaction)
            except TransactionFenced:
                raise
            except Exception:
                # Not committed, and the producer can only abort now: the next begin_transaction would find this
                # one still open. The caller runs the batch's jobs again.
                await self._abort()
                raise

    async def commit_offsets(self, offsets: dict[Partition, int]) -> None:
        """Add consumer offsets (next offset to read, per partition) to the open transaction."""
        if offsets:
            committed = {TopicPartition(*partition): offset for partition, offset in offsets.items()}
            await self._call(self._producer.send_offsets_to_transaction, committed, self._group)

    async def _abort(self) -> None:
        try:
            await self._call(self._producer.abort_transaction)
        except TransactionFenced:
            raise
        except Exception as exc:  # a producer that can neither commit nor abort cannot go on
            raise TransactionFenced(f"aborting a transaction failed: {exc}") from exc

    async def _call(self, method: Any, *args: Any) -> Any:
        try:
            return await method(*args)
        except _FATAL as exc:
            raise TransactionFenced(
                f"{type(exc).__name__}: another replica with the same transactional id took over, or the broker "
                "refused this producer"
            ) from exc
