"""Where a job's result may go: its `reply_to`, checked at admission against what the operator allows.

A job may ask for its result on a topic of its own (`reply_to`), which is how request/reply
callers and per-consumer streams work. Unchecked, that field let any publisher make a service
write into another model's topics, into the dead-letter or registry topics, or into names the
broker refuses (`.`, `..`), which made the service rewind its partition for ever. So:

* without `reply_to`, a result goes to the model's results topic (the tenant's, when the job came
  from a tenant's infer topic);
* a `reply_to` must match the service's allowed pattern (`AIAAS_<MODEL>_REPLY_TO_PATTERN`, a regular
  expression matched in full, in which `{results}` stands for that results topic). The default
  allows the results topic itself and `<results>.<suffix>`, so a tenant can only ever be answered
  on its own results topics, which only its principal can read;
* whatever the pattern says, `.`/`..`, Kafka's internal topics (`__…`), every infer (and urgent), retry
  and train topic, the dead-letter and registry topics and every other model type's topics are refused.

A refused `reply_to` is `RefusedReplyTo`: an error result on the default results topic and a dead
letter. A topic that does not exist (the broker creates none by itself) is refused the same way,
by the service's `TopicCatalog`, before the job runs.
"""

from __future__ import annotations

import re
from typing import Protocol

from aiaas.contract.topics import URGENT_SUFFIX, ModelTopics
from aiaas.errors import RefusedReplyTo

__all__ = ["ReplyTopics", "TopicCatalog", "DEFAULT_REPLY_TO_PATTERN"]

DEFAULT_REPLY_TO_PATTERN = r"{results}(\.[A-Za-z0-9_-]{1,100})?"
"""The results topic, or the results topic and one more name part (`aiaas.vision.results.dashboard`)."""

_INTERNAL_KINDS = ("infer", "infer" + URGENT_SUFFIX, "retry", "train")


class TopicCatalog(Protocol):
    """Which topics exist (the service's is backed by the broker's metadata)."""

    async def missing(self, topics: set[str]) -> set[str]:
        """Those of `topics` that do not exist."""
        ...


class ReplyTopics:
    """Decides the topic a job's result goes to (see the module docstring)."""

    def __init__(self, topics: ModelTopics, prefix: str, pattern: str | None = None) -> None:
        self._topics = topics
        self._prefix = prefix
        self._model_base = topics.results.rsplit(".", 1)[0]  # <prefix>.<model>
        self._pattern = pattern or DEFAULT_REPLY_TO_PATTERN
        self._compiled: dict[str, re.Pattern[str]] = {}
        self.compile(topics.results)  # a bad pattern fails at start, not at the first job

    def default(self, tenant: str | None) -> str:
        """The results topic of a job without `reply_to`."""
        return self._topics.tenant_results(tenant) if tenant else self._topics.results

    def result_topic(self, reply_to: str | None, tenant: str | None) -> str:
        """Where the result of a job with this `reply_to`, from this tenant, goes; raises RefusedReplyTo."""
        results = self.default(tenant)
        if reply_to is None or reply_to == results:
            return results
        why = self._never(reply_to)
        if why is None and not self.compile(results).fullmatch(reply_to):
            why = (f"it is not one of this service's reply topics ({results} or {results}.<name>, or what "
                   "AIAAS_<MODEL>_REPLY_TO_PATTERN allows)")
        if why is not None:
            raise RefusedReplyTo(f"reply_to {reply_to[:100]!r} is refused: {why}")
        return reply_to

    def compile(self, results: str) -> re.Pattern[str]:
        """The allowed pattern with `{results}` filled in for one results topic."""
        compiled = self._compiled.get(results)
        if compiled is None:
            try:
                compiled = re.compile(self._pattern.replace("{results}", re.escape(results)))
            except re.error as exc:
                raise ValueError(f"AIAAS_<MODEL>_REPLY_TO_PATTERN is not a regular expression: {exc}") from None
            if len(self._compiled) < 4096:  # one per tenant; bounded whatever topics jobs arrive on
                self._compiled[results] = compiled
        return compiled

    def _never(self, topic: str) -> str | None:
        """Why `topic` may never take results, whatever the pattern allows; None when it may."""
        if topic in (".", "..") or topic.startswith("__"):
            return "not a topic results may go to"
        if topic in (f"{self._prefix}.dlq", f"{self._prefix}.models"):
            return "an aiaas internal topic"
        if topic.startswith(self._prefix + "."):
            parts = topic[len(self._prefix) + 1:].split(".")
            if len(parts) >= 2 and parts[1] in _INTERNAL_KINDS:
                return "an infer, retry or train topic"
            if not topic.startswith(self._model_base + "."):
                return "another model type's topic"
        return None
