"""The topic catalog: which result topics exist, asked of the broker's metadata sparingly."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka.errors import KafkaConnectionError

from aiaas.kafka.topic_catalog import KafkaTopicCatalog


class FakeProducer:
    """A producer whose client answers the cluster's topic list and counts the requests."""

    def __init__(self, topics: set[str]) -> None:
        self.topics, self.requests, self.down = topics, 0, False
        self.client = SimpleNamespace(fetch_all_metadata=self._fetch)

    async def _fetch(self):
        self.requests += 1
        if self.down:
            raise KafkaConnectionError("broker away")
        return SimpleNamespace(topics=lambda: set(self.topics))


async def test_unknown_topics_are_asked_of_the_broker_at_most_once_a_second():
    producer = FakeProducer({"a.results"})
    catalog = KafkaTopicCatalog(producer, min_refresh_s=60)
    assert await catalog.missing({"a.results"}) == set()
    for i in range(50):  # a burst of jobs naming topics that do not exist
        assert await catalog.missing({"a.results", f"nope-{i}"}) == {f"nope-{i}"}
    assert producer.requests == 1


async def test_a_topic_created_or_deleted_is_seen_at_the_next_refresh():
    producer = FakeProducer({"a.results"})
    catalog = KafkaTopicCatalog(producer, min_refresh_s=0, max_age_s=0)
    assert await catalog.missing({"b.results"}) == {"b.results"}
    producer.topics.add("b.results")
    assert await catalog.missing({"b.results"}) == set()
    producer.topics.discard("b.results")
    assert await catalog.missing({"b.results"}) == {"b.results"}  # known before, refreshed once it aged


async def test_when_the_topic_list_cannot_be_read_nothing_is_called_missing():
    producer = FakeProducer(set())
    producer.down = True
    assert await KafkaTopicCatalog(producer).missing({"x"}) == set()  # the send decides, not a guess
