"""What the services set on aiokafka's fetcher that no consumer setting reaches.

aiokafka's `AIOKafkaConsumer` runs one fetch at a time per broker in the background, built from attributes of its
fetcher (`consumer._fetcher`, which exists once the consumer started). Two of its behaviours cost the services
latency or CPU, and neither has a setting:

* `fetch_beside_prefetched`: it sends no fetch to a broker while any of that broker's partitions holds prefetched
  records younger than a fixed 100 ms (`_prefetch_backoff`).
* `FetchPacing`: every fetch carries the same `fetch_min_bytes` and `fetch_max_wait_ms`. With the usual
  `fetch_min_bytes` of 1 a fetch comes back with the first record, so at partial load a service fetches about once a
  job, and each fetch costs the broker and the service a request. Kafka's answer, a larger `fetch_min_bytes`, makes a
  job that comes alone wait for `fetch_max_wait_ms`. The pacing sets both per fetch instead: a large minimum with a
  short wait (no longer than a batch takes) only while every model instance is busy, when the jobs fetched would
  wait for an instance anyway; the consumer's own values otherwise.

Both read and write the fetcher's private attributes (aiokafka 0.12-0.14); where they are missing (another aiokafka, or
a test's consumer) nothing changes.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fetch_beside_prefetched", "FetchPacing", "PREFETCH_GATE_S"]

PREFETCH_GATE_S = 0.005
"""How long prefetched, unconsumed records of one partition hold back the fetches of the others on its broker."""


def fetch_beside_prefetched(consumer: Any) -> None:
    """Let the consumer fetch a partition while another partition's prefetched records wait to be taken.

    A tenant past its share of the window leaves its records prefetched, so every other tenant's job waited up to
    aiokafka's fixed 100 ms to be fetched (bench/results: the tenant flood). Call once the consumer has started.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and hasattr(fetcher, "_prefetch_backoff"):
        fetcher._prefetch_backoff = PREFETCH_GATE_S  # noqa: SLF001 - no public setting


class FetchPacing:
    """Fewer, fuller fetches while every model instance is busy; the consumer's own fetches otherwise.

    `pace(True, bytes_per_record, batch_ms)`: from the next fetch on, the broker holds each fetch until it has about a
    batch of records (`max_batch` times `bytes_per_record`, at most what one partition may return, which the broker
    counts towards the minimum) or until `hold_ms` has passed, whichever comes first; never longer than `batch_ms`, how
    long a batch takes, so a fetch comes back about when an instance frees up (under 1 ms: no pacing). The broker
    counts stored bytes: on a compressed topic a batch's worth takes more records, and the hold ends the wait.
    `pace(False)`: back to the consumer's `fetch_min_bytes` and `fetch_max_wait_ms`. A fetch already in flight keeps
    what it was sent with, so a job that arrives as an instance frees up waits at most that hold more. `hold_ms` 0:
    never paced.
    """

    def __init__(self, consumer: Any, *, max_batch: int, hold_ms: int) -> None:
        self._consumer = consumer
        self._max_batch = max_batch
        self._hold_ms = hold_ms
        self._own: tuple[int, int] | None = None  # the consumer's (fetch_min_bytes, fetch_max_wait_ms)
        self.paced = False

    @property
    def enabled(self) -> bool:
        """Whether fetches may be paced at all (`hold_ms` above 0)."""
        return self._hold_ms > 0

    def pace(self, wanted: bool, bytes_per_record: float = 0.0, batch_ms: float = math.inf) -> None:
        """Pace the fetches from the next one on if `wanted` (and a batch takes 1 ms or more), or give them back their
        own settings."""
        fetcher: Any = getattr(self._consumer, "_fetcher", None)  # None before the consumer started
        if not self.enabled or not all(hasattr(fetcher, name) for name in ("_fetch_min_bytes", "_fetch_max_wait_ms")):
            return
        if self._own is None:
            self._own = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)  # noqa: SLF001 - see the module
        own_min, own_wait = self._own
        hold_ms = math.floor(min(own_wait, self._hold_ms, batch_ms))
        paced = wanted and hold_ms >= 1
        if paced:
            # The broker counts at most one partition's fetch size towards the minimum (and it is an int32).
            reachable = min(getattr(fetcher, "_max_partition_fetch_bytes", _MOST_MIN_BYTES), _MOST_MIN_BYTES)
            fetcher._fetch_min_bytes = max(own_min, min(int(self._max_batch * bytes_per_record), reachable))  # noqa: SLF001
            fetcher._fetch_max_wait_ms = hold_ms  # noqa: SLF001
        elif self.paced:
            fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = own_min, own_wait  # noqa: SLF001
        self.paced = paced


_MOST_MIN_BYTES = 1 << 20
"""The largest minimum a paced fetch asks for (aiokafka's default `max_partition_fetch_bytes`)."""
