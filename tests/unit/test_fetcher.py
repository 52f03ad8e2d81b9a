"""What the services set on aiokafka's fetcher: the prefetch gate, and fetches paced while every instance is busy."""

from types import SimpleNamespace

from aiaas.kafka.fetcher import PREFETCH_GATE_S, FetchPacing, fetch_beside_prefetched


def consumer_with_fetcher(min_bytes=1, max_wait_ms=50):
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=min_bytes, _fetch_max_wait_ms=max_wait_ms,
                                                    _prefetch_backoff=0.1))


def test_while_busy_a_fetch_waits_for_a_batchs_bytes_or_the_hold_and_then_gets_its_own_settings_back():
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, max_batch=32, hold_ms=10)
    pacing.pace(True, 200.0)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (6400, 10)
    assert pacing.paced
    pacing.pace(False)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, 50)
    assert not pacing.paced


def test_pacing_never_lengthens_the_consumers_own_wait_nor_lowers_its_own_minimum():
    consumer = consumer_with_fetcher(min_bytes=100_000, max_wait_ms=5)
    FetchPacing(consumer, max_batch=8, hold_ms=10).pace(True, 100.0)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (100_000, 5)


def test_a_hold_of_0_leaves_the_fetcher_alone():
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, max_batch=32, hold_ms=0)
    pacing.pace(True, 200.0)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, 50)
    assert not pacing.paced


def test_before_the_consumer_started_nothing_happens_and_its_own_settings_are_read_once_it_has_a_fetcher():
    consumer = SimpleNamespace()  # aiokafka makes the fetcher in start()
    pacing = FetchPacing(consumer, max_batch=4, hold_ms=10)
    pacing.pace(True, 50.0)
    assert not pacing.paced
    consumer._fetcher = consumer_with_fetcher(min_bytes=1, max_wait_ms=40)._fetcher
    pacing.pace(True, 50.0)
    pacing.pace(True, 60.0)  # a newer mean size while still busy
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (240, 10)
    pacing.pace(False)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, 40)


def test_another_fetcher_without_those_attributes_is_left_alone():
    consumer = SimpleNamespace(_fetcher=SimpleNamespace())
    pacing = FetchPacing(consumer, max_batch=4, hold_ms=10)
    pacing.pace(True, 50.0)
    fetch_beside_prefetched(consumer)
    assert vars(consumer._fetcher) == {} and not pacing.paced


def test_the_prefetch_gate_is_set_once_the_consumer_has_a_fetcher():
    consumer = consumer_with_fetcher()
    fetch_beside_prefetched(consumer)
    assert consumer._fetcher._prefetch_backoff == PREFETCH_GATE_S
    fetch_beside_prefetched(SimpleNamespace())  # not started: nothing to set, no error


def test_a_paced_fetch_never_waits_longer_than_a_batch_takes_and_batches_under_a_millisecond_are_not_paced():
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, max_batch=8, hold_ms=10)
    pacing.pace(True, 100.0, batch_ms=4.7)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (800, 4)
    pacing.pace(True, 100.0, batch_ms=0.6)  # the instance is free again before a fetch could be held
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, 50)
    assert not pacing.paced


def test_a_paced_minimum_stays_within_what_one_partition_may_return():
    """The broker counts at most a partition's fetch size towards the minimum: a larger one could never be reached
    (and past 2**31 the request could not be written)."""
    consumer = consumer_with_fetcher()
    consumer._fetcher._max_partition_fetch_bytes = 65_536
    pacing = FetchPacing(consumer, max_batch=4096, hold_ms=10)
    pacing.pace(True, 4_000_000.0)
    assert consumer._fetcher._fetch_min_bytes == 65_536
    del consumer._fetcher._max_partition_fetch_bytes  # (another aiokafka): at most 1 MiB
    pacing.pace(True, 4_000_000.0)
    assert consumer._fetcher._fetch_min_bytes == 1 << 20
