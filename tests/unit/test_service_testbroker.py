"""The model service wiring under FastStream's in-memory test broker (no Kafka)."""

import numpy as np
from faststream.kafka import TestKafkaBroker

from aiaas.codec import decode_result, encode
from aiaas.contracts import Job, Tensor
from aiaas.service import ModelService
from aiaas.settings import KafkaSettings, WorkerSettings
from tests.fakes import SumRuntime


def job(i: int) -> Job:
    return Job(job_id=f"j{i}", model="vision", inputs={"x": Tensor.from_numpy(np.full(3, i, dtype=np.float32))})


async def test_service_answers_every_job_and_dead_letters_garbage():
    service = ModelService(SumRuntime(), KafkaSettings(topic_prefix="tb"), WorkerSettings(max_batch=8))
    received, dead = [], []

    @service.broker.subscriber("tb.vision.results")
    async def collect(body: bytes) -> None:
        received.append(decode_result(body, 1 << 20))

    @service.broker.subscriber("tb.dlq")
    async def collect_dead(body: bytes) -> None:
        dead.append(body)

    async with TestKafkaBroker(service.broker) as broker:
        await broker.publish_batch(*(encode(job(i)) for i in range(4)), topic="tb.vision.infer")
        await broker.publish(b"\xc1garbage", topic="tb.vision.infer", key=b"g1")
        await broker.publish(encode(job(9)), topic="tb.vision.infer", key=b"j9")

    by_id = {r.job_id: r for r in received}
    assert {k: r.outputs.get("sum") for k, r in by_id.items() if r.status == "ok"} == {
        "j0": 0.0, "j1": 3.0, "j2": 6.0, "j3": 9.0, "j9": 27.0}
    assert by_id["g1"].status == "error" and by_id["g1"].error.type == "UndecodableMessage"
    assert dead == [b"\xc1garbage"]
