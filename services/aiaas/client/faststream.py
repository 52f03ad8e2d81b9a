"""Reading aiaas results from a FastStream app.

Teams that already consume Kafka with FastStream can take aiaas results in their own handlers:

    from faststream import FastStream
    from faststream.kafka import KafkaBroker

    from aiaas.client.faststream import results_subscriber
    from aiaas.contract.envelopes import Result
    from aiaas.settings import KafkaSettings

    kafka = KafkaSettings()                                  # AIAAS_KAFKA_* (servers, SASL/TLS, tenant)
    broker = KafkaBroker(kafka.bootstrap_servers, security=kafka.faststream_security())

    @results_subscriber(broker, "vision", group_id="billing", kafka=kafka)
    async def on_result(result: Result) -> None:
        ...

    app = FastStream(broker)

`results_subscriber` subscribes to the results topic (the tenant's when `AIAAS_KAFKA_TENANT` is set) with the
consumer options aiaas readers need: `read_committed`, so an exactly-once service's aborted
transactions are never seen; from the earliest offset for a new group; and FastStream's `ACK` policy,
so a record the handler cannot take is committed and logged rather than read again for ever
(FastStream's default for Kafka, `ACK_FIRST`, commits before the handler has run: at-most-once).
A job's result can arrive twice under at-least-once delivery: results are keyed by job id, so keep
the ids handled (`aiaas.client.SeenFile` is one way) where that matters.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy

from aiaas.contract.codec import decode_result
from aiaas.contract.envelopes import Result
from aiaas.contract.topics import ModelTopics
from aiaas.settings import KafkaSettings

__all__ = ["result_decoder", "results_subscriber"]


def result_decoder(kafka: KafkaSettings | None = None) -> Any:
    """A FastStream `decoder=` that turns a results-topic record into a `Result` (checked against the contract;
    a record that is not one raises UndecodableMessage, and FastStream logs it)."""
    max_bytes = (kafka or KafkaSettings()).max_message_bytes

    def decode(message: Any) -> Result:
        return decode_result(message.body, max_bytes)

    return decode


def results_subscriber(broker: Any, model: str, *, group_id: str, kafka: KafkaSettings | None = None,
                       **options: Any) -> Any:
    """`broker.subscriber(...)` on `model`'s results topic with what an aiaas reader needs (the module says what);
    `options` go to FastStream as they are (they may override these)."""
    kafka = kafka or KafkaSettings()
    topics = ModelTopics.of(model, kafka.topic_prefix)
    topic = topics.tenant_results(kafka.tenant) if kafka.tenant else topics.results
    settings: dict[str, Any] = {
        "group_id": group_id, "auto_offset_reset": "earliest", "isolation_level": "read_committed",
        "ack_policy": AckPolicy.ACK, "decoder": result_decoder(kafka),
    }
    return broker.subscriber(topic, **(settings | options))
