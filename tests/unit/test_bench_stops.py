"""bench/stops.py: the service's collections and event-loop lag over a stretch, from two scrapes."""

from dataclasses import dataclass, field

from bench.stops import Stops, stops_table


@dataclass
class FakeScrape:
    histograms: dict[str, dict[float, float]] = field(default_factory=dict)
    error: str | None = None

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """`name`'s counts; with `generation=…`, those under "<name>{generation}"."""
        return self.histograms.get(f"{name}{{{match['generation']}}}" if match else name, {})


INF = float("inf")


def scrape(gc: dict[float, float], lag: dict[float, float]) -> FakeScrape:
    return FakeScrape({"aiaas_gc_pause_seconds": gc, "aiaas_event_loop_lag_seconds": lag})


def test_stops_count_what_each_histogram_gained_between_the_scrapes():
    before = scrape({0.001: 10, 0.01: 12, 0.05: 12, INF: 12}, {0.001: 100, 0.01: 100, 0.05: 100, INF: 100})
    after = scrape({0.001: 30, 0.01: 35, 0.05: 37, INF: 37}, {0.001: 150, 0.01: 158, 0.05: 160, INF: 160})
    stops = Stops.between(before, after)
    assert stops == Stops(collections=25, long_collections=2, longest_collection_ms=50.0,
                          lag_samples=60, long_lags=2, longest_lag_ms=50.0)


def test_nothing_gained_reads_zero_and_a_failed_scrape_reads_none():
    same = scrape({0.001: 3, INF: 3}, {0.001: 5, INF: 5})
    assert Stops.between(same, same) == Stops(0, 0, 0.0, 0, 0, 0.0)
    assert Stops.between(same, FakeScrape(error="refused")) is None
    assert Stops.between(None, same) is None
    assert "| 1 | alone | – |" in stops_table([("1", "alone", None)])


def test_a_stop_past_the_last_bucket_reads_past_its_bound():
    before = scrape({0.01: 0, 5.0: 0, INF: 0}, {0.01: 0, 5.0: 0, INF: 0})
    after = scrape({0.01: 0, 5.0: 0, INF: 1}, {0.01: 0, 5.0: 0, INF: 0})
    stops = Stops.between(before, after)
    assert stops is not None and stops.long_collections == 1
    assert "| > 5000 |" in stops_table([("1", "during the flood", stops)])


def stops_since_nothing(counts: dict[str, dict[float, float]]) -> Stops:
    """The stops between a scrape with these histograms all at zero and one with `counts`."""
    stops = Stops.between(FakeScrape({name: dict.fromkeys(c, 0.0) for name, c in counts.items()}), FakeScrape(counts))
    assert stops is not None
    return stops


def test_a_collection_that_waited_for_a_core_reads_a_shorter_cpu_bound():
    stops = stops_since_nothing({"aiaas_gc_pause_seconds": {0.002: 4, 0.05: 5, INF: 5},
                                 "aiaas_gc_cpu_seconds": {0.002: 5, 0.05: 5, INF: 5}})
    assert (stops.longest_collection_ms, stops.longest_collection_cpu_ms) == (50.0, 2.0)
    assert "| 50 | 2 |" in stops_table([("1", "during the flood", stops)])


def test_stretches_combine_into_one():
    a, b = Stops(3, 1, 20.0, 40, 0, 5.0, 2.0, 1), Stops(2, 0, 5.0, 60, 2, 50.0, 5.0, 0)
    assert Stops.combined([a, b]) == Stops(5, 1, 20.0, 100, 2, 50.0, 5.0, 1)
    assert Stops.combined([a, None]) is None
    assert Stops.combined([]) is None
    assert stops_table([("vision", "25%", a)], labels=("model", "offered")).startswith(
        "| model | offered | collections |")


def test_full_collections_are_counted_apart():
    stops = stops_since_nothing({"aiaas_gc_pause_seconds": {0.002: 6, 0.05: 9, INF: 9},
                                 "aiaas_gc_pause_seconds{2}": {0.002: 0, 0.05: 3, INF: 3}})
    assert (stops.collections, stops.full_collections, stops.long_collections) == (9, 3, 3)
    assert "| 1 | flood | 9 | 3 | 3 | 50 |" in stops_table([("1", "flood", stops)])
