"""A poll that raises or is cancelled still ends its count of polls in progress (aiaas.kafka.fetch_context)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState

from aiaas.kafka.fetch_context import make_fetch_context_exception_safe


@pytest.fixture
def subscription() -> SubscriptionState:
    make_fetch_context_exception_safe()
    return SubscriptionState(loop=asyncio.new_event_loop())


def test_a_poll_that_raises_leaves_the_idle_clock_running(subscription: SubscriptionState) -> None:
    with pytest.raises(UnicodeDecodeError), subscription.fetch_context():
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a header key that is not UTF-8")
    assert subscription.fetcher_idle_time >= 0
    subscription._last_fetch_ended -= 30  # as if the application had not polled for 30 s since
    assert subscription.fetcher_idle_time >= 30  # so max.poll.interval can fire


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
    subscription._last_fetch_ended -= 30
    assert subscription.fetcher_idle_time >= 30


def test_nested_polls_end_the_count_only_with_the_last(subscription: SubscriptionState) -> None:
    with subscription.fetch_context():
        with pytest.raises(RuntimeError), subscription.fetch_context():
            raise RuntimeError("inner poll failed")
        assert subscription.fetcher_idle_time == 0  # the outer poll is still in progress
    subscription._last_fetch_ended -= 30
    assert subscription.fetcher_idle_time >= 30
