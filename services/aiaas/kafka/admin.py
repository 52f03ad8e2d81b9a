"""Topics on the cluster: create what aiaas needs, list them, count partitions (aiokafka's admin client)."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)

from aiaas.errors import TopicNotCreated
from aiaas.settings import KafkaSettings

__all__ = ["ensure_topics", "list_topics", "partition_count"]


async def ensure_topics(settings: KafkaSettings, names: list[str]) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created. Safe to call from many processes.

    The broker creates no topic by itself (auto-creation is off, as it should be on a shared cluster), so every
    aiaas process creates what it needs here. A topic the broker refuses to create (no CREATE permission, a bad
    name) raises TopicNotCreated saying which and why; one that another process created meanwhile is fine.
    """
    admin = AIOKafkaAdminClient(**settings.connection_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if not missing:
            return []
        try:
            response = await admin.create_topics([NewTopic(name, num_partitions=settings.partitions,
                                                           replication_factor=settings.replication_factor)
                                                  for name in missing])
        except TopicAlreadyExistsError:  # older brokers answer a lone topic's race this way
            return []
        created, refused, codes = [], [], set()
        for topic, code, *rest in response.topic_errors:
            if code == 0:
                created.append(topic)
            elif code != TopicAlreadyExistsError.errno:  # another process won the race: fine
                error = for_code(code)
                codes.add(code)
                refused.append(f"{topic}: {error.__name__}{f' ({rest[0]})' if rest and rest[0] else ''}")
        if refused:
            hint = _NOT_AUTHORIZED_HINT if TopicAuthorizationFailedError.errno in codes else ""
            raise TopicNotCreated("the broker refused to create " + "; ".join(refused) + hint)
        return created
    finally:
        await admin.close()


_NOT_AUTHORIZED_HINT = (
    ". Under Kafka ACLs a topic this user may not use looks missing whether it exists or not, and creating it is "
    "refused: it may be another tenant's topic, or one only an operator creates (docs/security.md)"
)


async def list_topics(settings: KafkaSettings) -> dict[str, int]:
    """Topics whose names start with the aiaas prefix, with their partition counts."""
    admin = AIOKafkaAdminClient(**settings.connection_kwargs())
    await admin.start()
    try:
        names = sorted(n for n in await admin.list_topics() if n.startswith(settings.topic_prefix + "."))
        described = await admin.describe_topics(names) if names else []
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()


async def partition_count(settings: KafkaSettings, topic: str, *, wait_s: float = 0.0) -> int:
    """How many partitions `topic` has (0 when it does not exist), asked of the cluster now.

    A topic created a moment ago may not be in the cluster's metadata yet: with `wait_s`, ask
    again until it is, for up to that long.
    """
    admin = AIOKafkaAdminClient(**settings.connection_kwargs())
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            (described,) = await admin.describe_topics([topic])
            count = len(described["partitions"]) if described["error_code"] == 0 else 0
            if count or asyncio.get_running_loop().time() >= deadline:
                return count
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
