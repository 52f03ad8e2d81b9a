"""A poll that raises or is cancelled still ends its count of polls in progress (aiaas.kafka.fetch_context), so the
consumer's idle time, which max.poll.interval is checked against, goes on growing after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState

from aiaas.kafka.fetch_context import make_fetch_context_exception_safe


@pytest.fixture
def subscription() -> Iterator[SubscriptionState]:
    make_fetch_context_exception_safe()
    loop = asyncio.new_event_loop()
    yield SubscriptionState(loop=loop)
    loop.close()


def idle_after_a_while(subscription: SubscriptionState) -> float:
    time.sleep(0.01)
    return float(subscription.fetcher_idle_time)


def test_a_poll_that_raises_leaves_the_idle_clock_running(subscription: SubscriptionState) -> None:
    with pytest.raises(UnicodeDecodeError), subscription.fetch_context():
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a header key that is not UTF-8")
    assert idle_after_a_while(subscription) > 0  # with the count left at 1 it reads 0 for ever


def test_a_cancelled_poll_is_no_longer_counted(subscription: SubscriptionState) -> None:
    async def poll_then_be_cancelled() -> None:
        with subscription.fetch_context():
            await asyncio.sleep(10)

    async def run() -> None:
        task = asyncio.create_task(poll_then_be_cancelled())
        await asyncio.sleep(0)
        assert subscription.fetcher_idle_time == 0  # counted while in progress
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert idle_after_a_while(subscription) > 0


def test_nested_polls_end_the_count_only_with_the_last(subscription: SubscriptionState) -> None:
    with subscription.fetch_context():
        with pytest.raises(RuntimeError), subscription.fetch_context():
            raise RuntimeError("inner poll failed")
        assert idle_after_a_while(subscription) == 0  # the outer poll is still in progress
    assert idle_after_a_while(subscription) > 0


def test_importing_aiaas_kafka_replaces_it_once() -> None:
    import aiaas.kafka  # noqa: F401 - the import applies it

    replaced = SubscriptionState.__dict__["fetch_context"]
    assert replaced.__wrapped__.__module__ == "aiaas.kafka.fetch_context"
    make_fetch_context_exception_safe()
    assert SubscriptionState.__dict__["fetch_context"] is replaced
