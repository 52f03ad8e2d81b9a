"""Garbage collection settled for a long-running service process.

CPython's cyclic collector runs whenever 700 container objects more were made than freed. A
saturated service makes dozens per job (envelopes, tensors, results, spans), and each collection
walks the young objects that are still alive, which are the jobs in flight; every tenth one also
walks the middle generation, and now and then a full collection walks everything the process
holds, including the many objects that the imports and the model left behind, which never
become garbage. Timed with gc.callbacks on the saturated vision service, a sizeable share of its
CPU went to collections that found almost nothing (bench/hotpath.py; the hot-path report in
bench/results/).

So, once the model is loaded and before the first job: one full collection, then `gc.freeze()`
moves everything that survived out of the collector's sight, and the first threshold is raised so
a collection comes every `young_threshold` net allocations instead of every 700. Jobs make few
reference cycles (an exception's traceback, say); they are still collected, only less often.

Frozen objects are never collected, so when a model version is swapped in (`RuntimeSet`), the heap is
settled again (`resettle`): the version it replaced may be garbage by then, and the new one is long-lived.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap", "resettle"]


def settle_heap(young_threshold: int) -> None:
    """Collect once, freeze what survived, and collect the young generation every `young_threshold` (0: as is)."""
    gc.collect()
    gc.freeze()
    if young_threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


def resettle() -> None:
    """After a model swap: unfreeze, collect (an evicted version is freed), freeze again. Nothing if this process
    never settled its heap (a test, a library user's process)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()
