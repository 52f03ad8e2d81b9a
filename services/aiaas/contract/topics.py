"""Topic names: every model's, every tenant's, and the shared ones (creating them is `kafka/admin.py`'s)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiaas.settings import KafkaSettings

__all__ = ["ModelTopics", "URGENT_SUFFIX", "dlq_topic", "models_topic", "service_topics", "TENANT_PATTERN",
           "check_tenant"]

URGENT_SUFFIX = "-urgent"
"""What makes an infer topic's urgent lane: `<prefix>.<model>.infer-urgent[.<tenant>]`."""

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
    cancel: str
    """Job ids whose generation should end now (streaming model types; a service creates it when it streams)."""

    @classmethod
    def of(cls, model: str, prefix: str = "aiaas") -> ModelTopics:
        """`<prefix>.<model>.infer|train|results|retry|cancel`."""
        base = f"{prefix}.{model}"
        return cls(f"{base}.infer", f"{base}.train", f"{base}.results", f"{base}.retry", f"{base}.cancel")

    @property
    def urgent(self) -> str:
        """`<prefix>.<model>.infer-urgent`: the urgent lane. Its jobs are fetched before the infer topic's and go
        first into the next batch (`contract/priority.py`); publishers put jobs of priority > 0 here."""
        return self.infer + URGENT_SUFFIX

    def all(self) -> list[str]:
        """Every name every model type's service needs (not `cancel`: only streaming ones read it)."""
        return [self.infer, self.urgent, self.train, self.results, self.retry]

    def is_urgent(self, topic: str) -> bool:
        """Whether `topic` is the urgent lane or a tenant's urgent lane."""
        return topic == self.urgent or topic.startswith(self.urgent + ".")

    def job_topic(self, tenant: str | None, *, urgent: bool = False) -> str:
        """Where a publisher sends an inference job: the infer topic or the urgent lane, the tenant's own if any."""
        base = self.urgent if urgent else self.infer
        return f"{base}.{check_tenant(tenant)}" if tenant else base

    # -- tenants: each has its own infer, train and results topics, so Kafka ACLs say who reads and writes them --

    def tenant_infer(self, tenant: str) -> str:
        """`<prefix>.<model>.infer.<tenant>`: jobs that tenant publishes (only its principal may write here)."""
        return f"{self.infer}.{check_tenant(tenant)}"

    def tenant_urgent(self, tenant: str) -> str:
        """`<prefix>.<model>.infer-urgent.<tenant>`: that tenant's urgent lane (only its principal may write here)."""
        return f"{self.urgent}.{check_tenant(tenant)}"

    def tenant_train(self, tenant: str) -> str:
        """`<prefix>.<model>.train.<tenant>`: that tenant's training jobs."""
        return f"{self.train}.{check_tenant(tenant)}"

    def tenant_results(self, tenant: str) -> str:
        """`<prefix>.<model>.results.<tenant>`: that tenant's results (only its principal may read here)."""
        return f"{self.results}.{check_tenant(tenant)}"

    def tenant_cancel(self, tenant: str) -> str:
        """`<prefix>.<model>.cancel.<tenant>`: that tenant's cancellations (of its own jobs only)."""
        return f"{self.cancel}.{check_tenant(tenant)}"

    def cancel_tenant_of(self, topic: str) -> str | None:
        """The tenant whose cancel topic `topic` is (None: the shared one); ValueError for any other topic."""
        if topic == self.cancel:
            return None
        if topic.startswith(self.cancel + ".") and _TENANT.fullmatch(topic[len(self.cancel) + 1:]):
            return topic[len(self.cancel) + 1:]
        raise ValueError(f"{topic!r} is not one of the {self.cancel}[.<tenant>] topics")

    def cancel_pattern(self) -> str:
        """A regular expression for the shared cancel topic and every tenant's."""
        return re.escape(self.cancel) + rf"(\.{TENANT_PATTERN})?"

    def tenant_of(self, topic: str) -> str | None:
        """The tenant whose infer (or urgent), train or results topic `topic` is; None for the shared (untenanted)
        ones.

        Raises ValueError for a topic that is none of this model type's infer, urgent, train or results topics.
        """
        for base in (self.infer, self.urgent, self.train, self.results):
            if topic == base:
                return None
            if topic.startswith(base + ".") and _TENANT.fullmatch(topic[len(base) + 1:]):
                return topic[len(base) + 1:]
        raise ValueError(f"{topic!r} is not one of the {self.infer}[.<tenant>] topics")

    def infer_pattern(self) -> str:
        """A regular expression for the shared infer topic, every tenant's, and their urgent lanes (for a pattern
        subscription)."""
        return re.escape(self.infer) + rf"({re.escape(URGENT_SUFFIX)})?(\.{TENANT_PATTERN})?"

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
