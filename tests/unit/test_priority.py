"""Priority travels where the pipeline reads it without decoding: the urgent lane (a topic) and a header."""

import re

import pytest

from aiaas.contract.priority import PRIORITY_HEADER, URGENT_RANK, check_priority, priority_headers, rank
from aiaas.contract.topics import ModelTopics
from aiaas.errors import InvalidHeaders

TOPICS = ModelTopics.of("vision", "p")


def test_the_urgent_lane_is_a_topic_of_its_own_per_tenant_and_names_its_tenant():
    assert TOPICS.urgent == "p.vision.infer-urgent"
    assert TOPICS.job_topic(None) == "p.vision.infer" and TOPICS.job_topic(None, urgent=True) == TOPICS.urgent
    assert TOPICS.job_topic("alice", urgent=True) == TOPICS.tenant_urgent("alice") == "p.vision.infer-urgent.alice"
    assert TOPICS.tenant_of("p.vision.infer-urgent.alice") == "alice" and TOPICS.tenant_of(TOPICS.urgent) is None
    assert TOPICS.is_urgent("p.vision.infer-urgent.alice") and not TOPICS.is_urgent("p.vision.infer.alice")
    assert TOPICS.urgent in TOPICS.all()
    with pytest.raises(ValueError):
        TOPICS.tenant_of("p.vision.infer-urgentX")


def test_the_services_subscription_takes_every_lane_of_every_tenant_and_nothing_else():
    pattern = re.compile(f"^(?:{TOPICS.infer_pattern()})$")
    for topic in ("p.vision.infer", "p.vision.infer.alice", "p.vision.infer-urgent", "p.vision.infer-urgent.bob"):
        assert pattern.match(topic), topic
    for topic in ("p.vision.infer-urgent.Bob", "p.vision.infer-later", "p.vision.infer.a.b", "p.text.infer-urgent"):
        assert not pattern.match(topic), topic


def test_a_priority_travels_as_a_header_only_when_it_is_not_the_default():
    assert priority_headers(0) == []
    assert priority_headers(-3) == [(PRIORITY_HEADER, b"-3")]
    assert check_priority("100") == 100 and check_priority("-100") == -100


@pytest.mark.parametrize("value", ["", "-", "high", "1.5", "101", "-101", "+1", " 1", "١", "00007"])
def test_a_header_that_is_not_a_priority_is_refused(value):
    with pytest.raises(InvalidHeaders, match=PRIORITY_HEADER):
        check_priority(value)


def test_the_rank_puts_the_urgent_lane_above_every_priority_and_never_raises():
    assert rank(False, None) == 0 and rank(True, []) == URGENT_RANK
    assert rank(False, [("traceparent", b"x"), (PRIORITY_HEADER, b"7")]) == 7
    assert rank(True, [(PRIORITY_HEADER, b"-100")]) > rank(False, [(PRIORITY_HEADER, b"100")])
    for junk in (None, b"\xff", b"many", "7"):
        assert rank(False, [(PRIORITY_HEADER, junk)]) == 0
