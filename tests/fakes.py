"""Small fake runtimes and a recording sink for worker tests (real models are tested elsewhere)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob


class SumRuntime:
    """Outputs the sum of the `x` tensor; records each batch it was called with."""

    model = "vision"
    version = "7"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[float]] = []
        self.delay_s = delay_s

    def serves(self, ref: str) -> bool:
        return ref in ("7", "production")

    def prepare(self, job: Job) -> np.ndarray:
        x = job.inputs.get("x")
        if not isinstance(x, Tensor):
            raise InvalidJob("needs tensor x")
        return x.to_numpy()

    def infer(self, items: Sequence[np.ndarray]) -> list[dict]:
        time.sleep(self.delay_s)
        sums = [float(item.sum()) for item in items]
        self.batches.append(sums)
        return [{"sum": s} for s in sums]


class FailingRuntime(SumRuntime):
    """Raises inside the model call."""

    def infer(self, items):
        raise RuntimeError("GPU on fire")


@dataclass
class Record:
    """A consumed record, shaped like aiokafka's ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


@dataclass
class RecordingSink:
    """Collects what the worker publishes."""

    sent: list = field(default_factory=list)

    async def send(self, topic, value, *, key, headers):
        self.sent.append((topic, value, key, dict(headers)))

    def on(self, topic: str) -> list:
        return [s for s in self.sent if s[0] == topic]


def job_record(offset: int, x: list[float], *, topic="p.vision.infer", priority=0, **fields) -> Record:
    job = Job(job_id=f"job-{offset}", model="vision", priority=priority,
              inputs={"x": Tensor.from_numpy(np.array(x, dtype=np.float32))}, **fields)
    return Record(topic, 0, offset, job.job_id.encode(), encode(job))


class FakeConsumer:
    """An in-memory consumer shaped like aiokafka's (getmany/pause/resume/seek/commit).

    It records what the pipeline does to it: pauses, seeks and every commit.
    """

    def __init__(self, records_by_partition: dict[int, list[Record]], topic: str = "p.vision.infer") -> None:
        from aiokafka import TopicPartition

        self.log = {TopicPartition(topic, p): list(records) for p, records in records_by_partition.items()}
        self.offsets = {tp: 0 for tp in self.log}
        self.paused: set = set()
        self.pause_calls = 0
        self.commits: list[dict] = []
        self.seeks: list[tuple] = []
        self.unparseable: set[tuple[int, int]] = set()  # (partition, offset) of records getmany raises on
        self.raised = 0
        self.polls_naming_paused = 0  # getmany calls naming a paused partition (aiokafka drops its prefetched records)

    def assignment(self) -> set:
        return set(self.log)

    def pause(self, *tps) -> None:
        self.pause_calls += 1
        self.paused |= set(tps)

    def resume(self, *tps) -> None:
        self.paused -= set(tps)

    def seek(self, tp, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.offsets[tp] = offset

    async def commit(self, offsets: dict) -> None:
        self.commits.append(dict(offsets))

    async def position(self, tp) -> int:
        return self.offsets[tp]

    async def committed(self, tp) -> int | None:
        """The group's committed offset of `tp` (None: none), as aiokafka's consumer answers it."""
        return next((commit[tp] for commit in reversed(self.commits) if tp in commit), None)

    async def seek_to_committed(self, *tps) -> dict:
        for tp in tps:
            self.offsets[tp] = max((commit[tp] for commit in self.commits if tp in commit), default=0)
        return {}

    async def getmany(self, *partitions, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be a positive integer")  # as aiokafka's
        out: dict = {}
        if any(tp in self.paused for tp in (partitions or self.log)):
            self.polls_naming_paused += 1
        budget = max_records or 1 << 30
        for tp, records in self.log.items():
            if tp in self.paused or budget == 0 or (partitions and tp not in partitions):
                continue
            taken = records[self.offsets[tp]:self.offsets[tp] + budget]
            if any((tp.partition, record.offset) in self.unparseable for record in taken):
                # As aiokafka on a record it cannot parse: the call raises, the failing partition stays where it
                # was, and what the call drained from other partitions is lost (their positions moved on).
                self.raised += 1
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
            if taken:
                out[tp] = taken
                self.offsets[tp] += len(taken)
                budget -= len(taken)
        if not out:
            import asyncio

            await asyncio.sleep(timeout_ms / 1000)
        return out

    def last_commits(self) -> dict:
        """The last committed offset per partition number."""
        last: dict = {}
        for commit in self.commits:
            for tp, offset in commit.items():
                assert offset >= last.get(tp.partition, 0), "commits went backwards"
                last[tp.partition] = offset
        return last
