"""Topic names and their idempotent creation."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code

from .settings import KafkaSettings

__all__ = ["ModelTopics", "dlq_topic", "models_topic", "service_topics", "ensure_topics", "list_topics",
           "TENANT_PATTERN", "check_tenant", "TopicNotCreated"]

TENANT_PATTERN = r"[a-z][a-z0-9_-]{0,62}"
"""A tenant's name: it is also a Kafka principal's name and the last part of the tenant's topic names."""
_TENANT = re.compile(TENANT_PATTERN)


def check_tenant(tenant: str) -> str:
    """`tenant` when it is a valid tenant name; raises ValueError saying what a name may hold otherwise."""
    if not _TENANT.fullmatch(tenant):
        raise ValueError(f"{tenant!r} is not a tenant name: a lower-case letter, then up to 62 lower-case letters, "
                         "digits, '_' or '-'")
    return tenant


@dataclass(frozen=True)
class ModelTopics:
    """The topics of one model type."""

    infer: str
    train: str
    results: str
    retry: str

    @classmethod
    def of(cls, model: str, prefix: str = "aiaas") -> "ModelTopics":
        """`<prefix>.<model>.infer|train|results|retry`."""
        base = f"{prefix}.{model}"
        return cls(f"{base}.infer", f"{base}.train", f"{base}.results", f"{base}.retry")

    def all(self) -> list[str]:
        """Every name."""
        return [self.infer, self.train, self.results, self.retry]

    # -- tenants: each has its own infer, train and results topics, so Kafka ACLs say who reads and writes them --

    def tenant_infer(self, tenant: str) -> str:
        """`<prefix>.<model>.infer.<tenant>`: jobs that tenant publishes (only its principal may write here)."""
        return f"{self.infer}.{check_tenant(tenant)}"

    def tenant_train(self, tenant: str) -> str:
        """`<prefix>.<model>.train.<tenant>`: that tenant's training jobs."""
        return f"{self.train}.{check_tenant(tenant)}"

    def tenant_results(self, tenant: str) -> str:
        """`<prefix>.<model>.results.<tenant>`: that tenant's results (only its principal may read here)."""
        return f"{self.results}.{check_tenant(tenant)}"

    def tenant_of(self, topic: str) -> str | None:
        """The tenant whose infer, train or results topic `topic` is; None for the shared (untenanted) ones.

        Raises ValueError for a topic that is none of this model type's infer, train or results topics.
        """
        for base in (self.infer, self.train, self.results):
            if topic == base:
                return None
            if topic.startswith(base + ".") and _TENANT.fullmatch(topic[len(base) + 1:]):
                return topic[len(base) + 1:]
        raise ValueError(f"{topic!r} is not one of the {self.infer}[.<tenant>] topics")

    def infer_pattern(self) -> str:
        """A regular expression for the shared infer topic and every tenant's (for a pattern subscription)."""
        return re.escape(self.infer) + rf"(\.{TENANT_PATTERN})?"

    def train_pattern(self) -> str:
        """A regular expression for the shared train topic and every tenant's (the trainer's pattern subscription)."""
        return re.escape(self.train) + rf"(\.{TENANT_PATTERN})?"


def dlq_topic(prefix: str = "aiaas") -> str:
    """Dead letters of every model type: the original bytes plus origin and error headers."""
    return f"{prefix}.dlq"


def models_topic(prefix: str = "aiaas") -> str:
    """Registry announcements (new versions, alias moves)."""
    return f"{prefix}.models"


def service_topics(model: str, settings: KafkaSettings) -> list[str]:
    """Every topic a model's service needs."""
    prefix = settings.topic_prefix
    return [*ModelTopics.of(model, prefix).all(), dlq_topic(prefix), models_topic(prefix)]


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


class TopicNotCreated(Exception):
    """The broker refused to create a topic aiaas needs (permissions, name, or the cluster's policy)."""


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
