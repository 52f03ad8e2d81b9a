"""A stop that takes too long logs where each task waits (serving/task_dump.py)."""

import asyncio
import logging

from aiaas.serving.task_dump import awaiting, log_pending_tasks


async def _inner(event: asyncio.Event) -> None:
    await event.wait()


async def _outer(event: asyncio.Event) -> None:
    await _inner(event)


async def test_each_unfinished_task_is_named_with_the_coroutines_it_waits_in(caplog) -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_outer(event), name="stuck-one")
    await asyncio.sleep(0)
    assert awaiting(task.get_coro()).split(" → ")[:2][0].startswith("_outer (")
    assert "_inner (" in awaiting(task.get_coro()) and "Event.wait (" in awaiting(task.get_coro())
    with caplog.at_level(logging.WARNING):
        log_pending_tasks(logging.getLogger("test"), "not stopped")
    assert "not stopped" in caplog.text and "stuck-one: _outer (" in caplog.text
    event.set()
    await task
    assert awaiting(task.get_coro()) == "?"  # finished: nothing it waits in
