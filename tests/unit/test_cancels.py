"""Cancel requests: the job id from the key, the tenant from the topic, anything else skipped."""

from __future__ import annotations

from aiaas.contract.topics import ModelTopics
from aiaas.serving.cancels import CancelListener
from aiaas.settings import KafkaSettings

TOPICS = ModelTopics.of("llm", "p")


def listener(cancelled: list[tuple[str, str | None]], known: set[str]) -> CancelListener:
    def cancel(job_id: str, tenant: str | None) -> bool:
        cancelled.append((job_id, tenant))
        return job_id in known

    return CancelListener(KafkaSettings(), TOPICS, "p.llm", cancel)


def test_the_tenant_is_the_topics_and_the_job_id_the_key():
    cancelled: list[tuple[str, str | None]] = []
    follower = listener(cancelled, {"job-1"})
    follower._handle("p.llm.cancel.alice", b"job-1")
    follower._handle("p.llm.cancel", b"job-2")
    assert cancelled == [("job-1", "alice"), ("job-2", None)]
    assert follower.cancelled == 1  # job-2 was not running here


def test_keys_that_are_no_job_id_and_foreign_topics_are_skipped():
    cancelled: list[tuple[str, str | None]] = []
    follower = listener(cancelled, set())
    for topic, key in (("p.llm.cancel", None), ("p.llm.cancel", b"\xff\xfe"), ("p.llm.cancel", b"a\x00b"),
                       ("p.llm.cancel.Not-A-Tenant", b"job"), ("p.llm.infer", b"job")):
        follower._handle(topic, key)
    assert cancelled == []


def test_the_cancel_topics_of_every_tenant_match_the_pattern_and_nothing_else():
    import re

    pattern = re.compile(TOPICS.cancel_pattern())
    assert pattern.fullmatch("p.llm.cancel") and pattern.fullmatch("p.llm.cancel.alice")
    assert not pattern.fullmatch("p.llm.cancelled") and not pattern.fullmatch("p.llm.results")
    assert TOPICS.tenant_cancel("bob") == "p.llm.cancel.bob" and TOPICS.cancel_tenant_of("p.llm.cancel.bob") == "bob"
