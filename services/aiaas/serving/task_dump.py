"""Where a service's asyncio tasks are waiting: for the log, when a stop takes longer than it should.

A service that does not exit after SIGTERM says nothing by itself; these lines say which coroutine each task is
suspended in, outermost first, so the next such hang can be placed from the log alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["awaiting", "log_pending_tasks"]


def awaiting(coro: Any) -> str:
    """Where a suspended coroutine waits: each coroutine it awaits, outermost first, as `function (file:line)`."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_qualname} ({frame.f_code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " → ".join(frames) or "?"


def log_pending_tasks(log: logging.Logger, why: str) -> None:
    """One warning naming every task of the running loop that has not finished, and where each waits."""
    tasks = [task for task in asyncio.all_tasks() if not task.done()]
    lines = [f"  {task.get_name()}: {awaiting(task.get_coro())}" for task in tasks]
    log.warning("%s; %d tasks still running:\n%s", why, len(tasks), "\n".join(lines))
