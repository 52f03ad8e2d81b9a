"""aiokafka's count of polls in progress, made exception-safe so that a failed poll keeps max.poll.interval in force.

A group consumer leaves its group when the application has not polled for `max_poll_interval_ms`: that is how a
member whose event loop is stuck hands its partitions to the others. aiokafka measures the time since the last poll
ended (`SubscriptionState.fetcher_idle_time`) with a counter of polls in progress, kept by the context manager
`SubscriptionState.fetch_context` around every `getmany` and `getone`. The counter is decremented after its `yield`
without a `finally` (aiokafka 0.14), so a poll that raises — on a record the client cannot parse
(`aiaas.kafka.unparseable`), or cancelled — stays counted for ever: the idle time reads 0 from then on and the
check never fires again. One hostile record would switch it off for the life of the process.

`make_fetch_context_exception_safe` replaces that context manager, on aiokafka's class and so for every consumer of
the process, with the same one in a `try`/`finally`. Importing `aiaas.kafka` calls it, so every group consumer of
aiaas (the model services, their cancel follower, the trainer, the client's group reader) has it. Where aiokafka's
method is not the one described here (another version), nothing changes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from aiokafka.consumer.subscription_state import SubscriptionState

__all__ = ["make_fetch_context_exception_safe"]


@contextlib.contextmanager
def _fetch_context(self: Any) -> Iterator[None]:
    self._fetch_count += 1
    try:
        yield
    finally:
        self._fetch_count -= 1
        if self._fetch_count == 0:
            self._last_fetch_ended = time.monotonic()


def make_fetch_context_exception_safe() -> None:
    """Make every aiokafka consumer end a poll's count however the poll ends (idempotent; see the module docstring)."""
    original = getattr(SubscriptionState.__dict__.get("fetch_context"), "__wrapped__", None)
    if original is None or original is _fetch_context.__wrapped__:  # type: ignore[attr-defined]
        return  # not aiokafka's context manager, or already replaced
    if {"_fetch_count", "_last_fetch_ended"} <= set(original.__code__.co_names):
        SubscriptionState.fetch_context = _fetch_context
