"""Which topics exist, from the broker's metadata: the service's answer to "may a result go there?".

With topic auto-creation off (as it should be on any shared cluster), a result for a topic that does
not exist waits in the producer for metadata until its request times out, and then fails again
on every redelivery. The worker therefore asks this catalog before a job runs and refuses a job
whose result topic is missing (`contract/reply_topics.py`). The catalog reads the whole cluster's topic list
through the service's own producer connection, and reads it again only when asked about a topic
it does not know, at most once every `min_refresh_s` (a burst of jobs naming topics that do not
exist costs one metadata request a second, not one per job), and at least every `max_age_s`, so a
topic deleted meanwhile is refused again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

__all__ = ["KafkaTopicCatalog"]

log = logging.getLogger("aiaas.topic_catalog")


class KafkaTopicCatalog:
    """A `TopicCatalog` over a started producer's cluster metadata."""

    def __init__(self, producer: AIOKafkaProducer, *, min_refresh_s: float = 1.0, max_age_s: float = 30.0,
                 timeout_s: float = 5.0) -> None:
        self._producer = producer
        self._known: set[str] = set()
        self._refreshed_at = float("-inf")
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s  # a topic deleted since is noticed this soon
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def missing(self, topics: set[str]) -> set[str]:
        """Those of `topics` that the cluster does not have (none, when the metadata cannot be read now)."""
        unknown = topics - self._known
        if not unknown and time.monotonic() - self._refreshed_at < self._max_age_s:
            return set()
        async with self._lock:
            if time.monotonic() - self._refreshed_at >= self._min_refresh_s and not await self._refresh():
                return set()  # not knowing is not "missing": the send decides (a broker that is away comes back)
        return topics - self._known

    async def _refresh(self) -> bool:
        self._refreshed_at = time.monotonic()
        try:
            cluster = await asyncio.wait_for(self._producer.client.fetch_all_metadata(), self._timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("could not read the topic list (%s); result topics are not checked this time", exc)
            return False
        self._known = set(cluster.topics())
        return True
