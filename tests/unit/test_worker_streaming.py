"""The worker with a streaming runtime (fake): chunks before the final result, cancellation by tenant only."""

from __future__ import annotations

import asyncio
import threading

from aiaas.contract.codec import decode_result
from aiaas.contract.topics import ModelTopics
from aiaas.serving.worker import BatchWorker
from tests.fakes import RecordingSink, SumRuntime, job_record

TOPICS = ModelTopics.of("vision", "p")


class StreamingSum(SumRuntime):
    """Streams "a", "b", "c" for each job, then answers; `hold` keeps it generating until released or cancelled."""

    streams = True

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.release = threading.Event()
        self.cancelled: list[object] = []
        if not hold:
            self.release.set()

    def infer(self, items, progress=None):
        for piece in "abc":
            if progress is not None:
                progress(0, piece, 1)
        self.release.wait(30)
        finish = "cancelled" if self.cancelled else "stop"
        return [{"sum": float(item.sum()), "finish_reason": finish} for item in items]

    def cancel(self, item) -> None:
        self.cancelled.append(item)
        self.release.set()


def worker_for(runtime, sink) -> BatchWorker:
    return BatchWorker(runtime, sink, topics=TOPICS, dlq_topic="p.dlq", group="p.vision", max_message_bytes=1 << 20)


async def test_chunks_reach_the_sink_in_order_before_the_final_result():
    sink = RecordingSink()
    await worker_for(StreamingSum(), sink).handle([job_record(1, [1.0, 2.0])])
    records = [decode_result(value, 1 << 20) for _, value, key, _ in sink.on(TOPICS.results) if key == b"job-1"]
    assert [r.status for r in records] == ["chunk", "chunk", "chunk", "ok"]
    assert [r.chunk.seq for r in records[:3]] == [0, 1, 2] and "".join(r.chunk.text for r in records[:3]) == "abc"
    assert len({r.chunk.run for r in records[:3]}) == 1
    assert records[-1].outputs["sum"] == 3.0


async def test_a_cancellation_ends_only_the_job_of_the_tenant_whose_topic_it_came_on():
    runtime, sink = StreamingSum(hold=True), RecordingSink()
    worker = worker_for(runtime, sink)
    alices = job_record(5, [1.0], topic="p.vision.infer.alice")
    running = asyncio.create_task(worker.handle([alices]))
    for _ in range(500):  # until it is generating (its chunks are out)
        if sink.sent:
            break
        await asyncio.sleep(0.01)
    assert not worker.cancel("job-5", "bob") and not worker.cancel("job-5", None)  # not bob's, not the shared topic's
    assert runtime.cancelled == []
    assert worker.cancel("job-5", "alice")
    await asyncio.wait_for(running, 10)
    final = [decode_result(v, 1 << 20) for t, v, k, _ in sink.sent if k == b"job-5"][-1]
    assert final.status == "ok" and final.outputs["finish_reason"] == "cancelled"
    assert not worker.cancel("job-5", "alice")  # over: nothing left to cancel
