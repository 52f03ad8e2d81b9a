"""The state behind `/healthz` and `/readyz`, kept by the process's event loop and read by the endpoint's thread.

Alive: the event loop has run its once-a-second tick lately (a loop held by a stuck call or a deadlock stops it).
Ready: started (a service: model loaded and group assignment received; a trainer: its consumer started), the broker
answered lately, and not stopping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["Health", "watch_broker"]

log = logging.getLogger("aiaas.metrics")

_TICK_LATE_S = 30.0
"""A loop that has not ticked for this long is stuck: liveness fails and an orchestrator restarts the process. Long
enough for the longest synchronous step a healthy service takes (a model call on the event loop, a version load)."""

_BROKER_PROBE_S = 5.0
_BROKER_LATE_S = 15.0
"""No answer from the broker for this long (three probes): not ready."""


class Health:
    """What the probes answer. Every method but the two probes is called on the event loop."""

    def __init__(self, waiting_for: str = "starting", *, stuck_after_s: float = _TICK_LATE_S,
                 broker_late_after_s: float = _BROKER_LATE_S) -> None:
        self._stuck_after_s, self._broker_late_after_s = stuck_after_s, broker_late_after_s
        self._ticked: float | None = None  # monotonic; None before the loop runs (loading the model)
        self._broker_seen: float | None = None
        self._waiting_for: str | None = waiting_for
        self._stopping = False

    def tick(self) -> None:
        """The event loop is running."""
        self._ticked = time.monotonic()

    def broker_answered(self) -> None:
        """A request to the broker was answered."""
        self._broker_seen = time.monotonic()

    def waiting_for(self, what: str | None) -> None:
        """What readiness waits for now (e.g. the group's assignment); None: nothing."""
        self._waiting_for = what

    def stopping(self) -> None:
        """Draining before exit: not ready any more."""
        self._stopping = True

    def alive(self) -> str | None:
        """None when alive, else why not."""
        if self._ticked is None:
            return None  # loading the model, before the event loop runs: the process is busy, not stuck
        late = time.monotonic() - self._ticked
        return f"the event loop has not run for {late:.0f} s" if late > self._stuck_after_s else None

    def ready(self) -> str | None:
        """None when ready to take jobs, else why not."""
        if self._stopping:
            return "stopping: draining in-flight work"
        if self._waiting_for is not None:
            return self._waiting_for
        if self._broker_seen is None or time.monotonic() - self._broker_seen > self._broker_late_after_s:
            return f"the broker has not answered for {self._broker_late_after_s:.0f} s"
        return self.alive()


async def watch_broker(health: Health, ask: Callable[[], Awaitable[object]]) -> None:
    """Tick `health` once a second and ask the broker something every few seconds (`ask`: e.g. a producer's
    `client.force_metadata_update`, a metadata request for the few topics it writes to), noting each answer (a
    result of False or an exception is none); until cancelled."""
    asking: asyncio.Task[None] | None = None

    async def probe() -> None:
        try:
            if await asyncio.wait_for(ask(), _BROKER_PROBE_S) is not False:
                health.broker_answered()
        except Exception as exc:  # unreachable: readiness says so once it has lasted
            log.debug("broker probe failed: %s", exc)
        await asyncio.sleep(_BROKER_PROBE_S)

    try:
        while True:
            health.tick()
            if asking is None or asking.done():
                asking = asyncio.create_task(probe(), name="aiaas-broker-probe")
            await asyncio.sleep(1.0)
    finally:
        if asking is not None:
            asking.cancel()
