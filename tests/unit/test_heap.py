"""settle_heap: one collection, then what survived is frozen and young collections come less often."""

import gc
import weakref

from aiaas.serving.heap import resettle, settle_heap
from aiaas.settings import WorkerSettings


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_collects_garbage_freezes_survivors_and_raises_the_young_threshold(restored_gc) -> None:
    gc.unfreeze()
    kept = _Cycle()
    garbage = weakref.ref(_Cycle())  # unreachable at once, but a cycle: only the collector frees it
    assert garbage() is not None
    middle, old = gc.get_threshold()[1:]

    settle_heap(20_000)

    assert garbage() is None
    assert gc.get_threshold() == (20_000, middle, old)
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects()), "a survivor is frozen: out of every generation"


def test_zero_keeps_the_threshold(restored_gc) -> None:
    before = gc.get_threshold()
    settle_heap(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() > 0


def test_young_collections_still_free_cycles_after_settling(restored_gc) -> None:
    settle_heap(20_000)
    cycle = weakref.ref(_Cycle())
    assert cycle() is not None
    gc.collect(0)
    assert cycle() is None


def test_services_default_to_a_raised_threshold() -> None:
    assert WorkerSettings().gc_young_threshold == 20_000


def test_resettling_frees_what_became_garbage_while_frozen(restored_gc) -> None:
    settle_heap(20_000)
    held = [_Cycle()]
    probe = weakref.ref(held[0])
    resettle()  # frozen now
    held.clear()
    gc.collect()
    assert probe() is not None, "a frozen cycle is out of the collector's sight"
    resettle()
    assert probe() is None
    assert gc.get_freeze_count() > 0


def test_resettling_a_process_that_never_settled_does_nothing(restored_gc) -> None:
    gc.unfreeze()
    resettle()
    assert gc.get_freeze_count() == 0
