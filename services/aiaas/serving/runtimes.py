"""The model versions one service instance holds, and the hot swap between them.

An instance serves one ref (normally the alias `production`). When that alias moves, the
new version is loaded on a separate loader thread while batches keep running on the old
one; the worker swaps between two batches, so no job waits for a load and no job fails.
Jobs may pin another version or alias: it is loaded on first use and kept (a few at most).
Every result names the version that produced it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from aiaas.errors import ServiceMisconfigured, UnknownModelVersion
from aiaas.serving.heap import resettle
from aiaas.serving.runtime import ModelRuntime, close_runtime

__all__ = ["RuntimeSet"]

log = logging.getLogger("aiaas.runtimes")

Loader = Callable[[str], ModelRuntime]
"""Loads a registry version or alias (blocking; sha256-checked); raises UnknownModelVersion."""


class RuntimeSet:
    """The serving runtime, runtimes pinned by jobs, and a swap prepared in the background."""

    def __init__(self, current: ModelRuntime, *, serve_ref: str = "production", load: Loader | None = None,
                 aliases: dict[str, int] | None = None, keep: int = 3) -> None:
        self.current = current
        self.serve_ref = serve_ref
        self.swaps = 0
        """New versions taken into service by `swap_if_ready` so far."""
        self._load = load
        self._aliases = dict(aliases or {})
        self._keep = keep
        self._loaded: OrderedDict[str, ModelRuntime] = OrderedDict({current.version: current})
        self._next: ModelRuntime | None = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._lock = threading.Lock()
        """Guards `_loaded` and `_next` (model threads load pinned versions while the event loop swaps)."""
        self._pinning = threading.Lock()
        """One pinned load at a time: two jobs pinning a new version load it once."""

    @property
    def model(self) -> str:
        """The model type."""
        return self.current.model

    def swap_if_ready(self) -> ModelRuntime | None:
        """Between batches: start serving the version loaded in the background, if one is ready."""
        with self._lock:
            if self._next is None or self._next.version != self._version_of(self.serve_ref):
                return None
            previous, self.current, self._next = self.current, self._next, None
            self.swaps += 1
        self._remember(self.current)
        resettle()  # the versions just let go of are collectable; the new one is long-lived
        log.info("%s: now serving v%s (was v%s)", self.model, self.current.version, previous.version)
        return self.current

    async def follow(self, aliases: dict[str, int]) -> None:
        """Take a registry change: remember its aliases; load the served alias's new version if it moved."""
        self._aliases = dict(aliases)
        target = self._version_of(self.serve_ref)
        if target == self.current.version:
            self._set_next(None)  # e.g. a rollback arrived before a pending swap happened: stay
            return
        if target is None or (self._next is not None and target == self._next.version):
            return
        with self._lock:  # looked up and made next at once: a pinned load on a model thread cannot evict it between
            kept = self._loaded.get(target)
            previous = self._next
            if kept is not None:
                self._next = kept
        if kept is not None:
            if previous is not None and previous is not kept:
                self._let_go_unless_kept(previous)
            return
        runtime = await self._load_in_background(target)
        if runtime is None:
            return
        if self._version_of(self.serve_ref) == runtime.version:  # still the newest
            self._set_next(runtime)
        else:  # the alias moved on during the load
            self._let_go_unless_kept(runtime)

    def route(self, ref: str | None) -> ModelRuntime | str:
        """The loaded runtime for a job's ref; or the version to load first (a string)."""
        if ref is None or ref == self.serve_ref:
            return self.current
        version = self._version_of(ref)
        if version is None:
            known = ", ".join(sorted(self._aliases)) or "none"
            raise UnknownModelVersion(f"{self.model} has no version or alias {ref!r} (aliases: {known})")
        return self._loaded.get(version) or version

    def load_pinned(self, version: str) -> ModelRuntime:
        """Load a version a job pinned (blocking: call it off the event loop); kept for later jobs."""
        with self._pinning:
            runtime = self._loaded.get(version)
            if runtime is None:
                if self._load is None:
                    raise UnknownModelVersion(f"this instance serves only {self.model} v{self.current.version}")
                runtime = self._load(version)
                self._remember(runtime)
        return runtime

    def loaded(self) -> list[ModelRuntime]:
        """Every version loaded here (the one serving unpinned jobs among them)."""
        return list(self._loaded.values())

    def close(self) -> None:
        """Stop the loader thread."""
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _version_of(self, ref: str) -> str | None:
        if ref in self._aliases:
            return str(self._aliases[ref])
        number = ref.removeprefix("v")
        if number.isdigit():
            return number
        return self.current.version if ref == self.serve_ref else None

    async def _load_in_background(self, version: str) -> ModelRuntime | None:
        if self._load is None:
            return None
        with trace.get_tracer("aiaas").start_as_current_span(f"load {self.model} v{version}") as span:
            try:
                runtime = await asyncio.get_running_loop().run_in_executor(self._loader, self._load, version)
            except Exception as exc:  # a bad new version must not take the service down: keep serving the old one
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                serving = self.current.version
                if isinstance(exc, ServiceMisconfigured):  # the settings cannot serve it: say why, no traceback
                    log.error("%s: cannot serve v%s: %s; still serving v%s", self.model, version, exc, serving)
                else:
                    log.exception("%s: loading v%s failed; still serving v%s", self.model, version, serving)
                return None
        log.info("%s: v%s loaded in the background", self.model, version)
        return runtime

    def _remember(self, runtime: ModelRuntime) -> None:
        retired = []
        with self._lock:
            replaced = self._loaded.get(runtime.version)
            if replaced is not None and replaced is not runtime:
                retired.append(replaced)
            self._loaded[runtime.version] = runtime
            self._loaded.move_to_end(runtime.version)
            while len(self._loaded) > self._keep:
                oldest = next(iter(self._loaded))
                if oldest == self.current.version:
                    self._loaded.move_to_end(oldest)
                    continue
                retired.append(self._loaded.pop(oldest))
        for old in retired:
            self._let_go_unless_kept(old)

    def _set_next(self, runtime: ModelRuntime | None) -> None:
        """The version to swap to at the next chance (None: none); one it replaces is let go of."""
        with self._lock:
            previous, self._next = self._next, runtime
        if previous is not None and previous is not runtime:
            self._let_go_unless_kept(previous)

    def _let_go_unless_kept(self, runtime: ModelRuntime) -> None:
        """Close a runtime this set no longer has in any role (serving, kept loaded, next)."""
        with self._lock:  # closed under the lock: no role can be given to it meanwhile
            if runtime is not self.current and runtime is not self._next and \
                    not any(r is runtime for r in self._loaded.values()):
                close_runtime(runtime)
