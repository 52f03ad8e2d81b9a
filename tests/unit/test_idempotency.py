"""The outcome memory: bounded in records and in bytes, and per tenant."""

import gc
import tracemalloc

from aiaas.errors import ModelFailure
from aiaas.serving.idempotency import Outcome, OutcomeCache


def test_the_oldest_outcome_is_forgotten_first():
    cache = OutcomeCache(2)
    for job_id in "abc":
        cache.put(job_id, Outcome("t", job_id.encode()))
    assert cache.get("a") is None and cache.get("c").payload == b"c" and len(cache) == 2
    OutcomeCache(0).put("x", Outcome("t", b"x"))  # a window of 0 remembers nothing


def test_the_byte_budget_forgets_the_oldest_before_the_record_bound_does():
    one = len(b"x" * 10_000) + 300 + 2  # payload, allowance, job id
    cache = OutcomeCache(1000, max_bytes=3 * one + one // 2)
    for i in range(10):
        cache.put(f"j{i}", Outcome("t", b"x" * 10_000))
        assert cache.memory_bytes <= cache.max_bytes
    assert len(cache) == 3 and [cache.get(f"j{i}") is not None for i in range(10)] == [False] * 7 + [True] * 3


def test_an_outcome_larger_than_the_whole_budget_is_not_remembered():
    cache = OutcomeCache(100, max_bytes=5_000)
    cache.put("small", Outcome("t", b"s"))
    cache.put("big", Outcome("t", b"b"))
    cache.put("big", Outcome("t", b"x" * 10_000))  # a newer outcome of "big" that does not fit: the old one goes
    assert cache.get("big") is None and cache.get("small") is not None
    assert cache.memory_bytes == len(b"s") + len("small") + 300


def test_storing_an_id_again_replaces_its_charge():
    cache = OutcomeCache(100, max_bytes=1 << 20)
    for size in (10, 1000, 10):
        cache.put("a", Outcome("t", b"x" * size))
    assert len(cache) == 1 and cache.memory_bytes == 10 + 1 + 300
    cache.put("a", Outcome("t", b"x" * 10), tenant="alice")
    assert cache.memory_bytes == 2 * (10 + 1 + 300) + len("alice")


def test_a_job_id_reused_by_another_tenant_never_gets_the_first_tenants_outcome():
    cache = OutcomeCache(100, max_bytes=1 << 20)
    cache.put("job-1", Outcome("p.text.results.alice", b"alice's result"), tenant="alice")
    assert cache.get("job-1", tenant="bob") is None
    assert cache.get("job-1") is None  # nor a job without a tenant
    cache.put("job-1", Outcome("p.text.results.bob", b"bob's result"), tenant="bob")
    assert cache.get("job-1", tenant="alice").payload == b"alice's result"
    assert cache.get("job-1", tenant="bob").payload == b"bob's result"
    assert cache.hits == 2 and len(cache) == 2


def test_the_allowance_per_outcome_covers_what_python_really_holds():
    cache = OutcomeCache(10_000, max_bytes=1 << 40)
    payloads = [b"%08d" % i * 125 for i in range(5_000)]  # 1,000 bytes each, made before measuring
    error = ModelFailure("gave up")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, payload in enumerate(payloads):
            cache.put(f"job-{i:08d}", Outcome("p.text.results", payload, error if i % 2 else None), tenant="alice")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    held += sum(len(p) + 33 for p in payloads)  # the payloads (made before measuring) are held too
    assert held <= cache.memory_bytes, (held, cache.memory_bytes)
    assert cache.memory_bytes <= 1.5 * held  # and not so generous that the budget means little
