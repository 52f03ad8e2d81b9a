"""Chunks: a streaming runtime's partial answers, sent to the job's results topic before its final result.

A runtime that streams (`runtime.streams`, the LLM's) calls the worker's progress callback from its own thread
with each job's new text; `ChunkStreamer.add` (on the event loop) turns it into a `chunk` result — keyed by the
job id, numbered from 0 within this run of the job (`Chunk.run`), with a PRODUCER span under the job's span —
and one sender task sends them in order, many at once. `flush(streams)` returns once every chunk of those streams
added so far is answered: the worker calls it before a job's final result is published, so the final result
comes after its chunks on the topic (same key, same partition).

Chunks are progress, not outcomes: they are not in the commit window, and a job run again (a crash, a rebalance)
streams again from seq 0 under a new run id. In exactly-once mode they go through a producer outside the
transactions (a transactional producer sends nothing outside one), so read_committed readers see them at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.trace import SpanKind

from aiaas import tracing
from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Chunk, Result
from aiaas.serving.batch import JobInFlight, ResultSink
from aiaas.serving.outcomes import OutgoingRecord, send_records
from aiaas.tracing.job_spans import JobSpans

__all__ = ["ChunkStreamer", "Stream"]

log = logging.getLogger("aiaas.chunks")


@dataclass
class Stream:
    """One run of one job's chunks."""

    job: JobInFlight
    topic: str
    run: str
    seq: int = 0
    unanswered: int = 0
    """Chunks added and not yet answered by the broker."""
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    """Abandoned: chunks added from now on are dropped."""


class ChunkStreamer:
    """Builds chunk records and sends them in order through a sink, many at once."""

    def __init__(self, sink: ResultSink, spans: JobSpans, model: str,
                 result_topic: Callable[[JobInFlight], str]) -> None:
        self._sink = sink
        self._spans = spans
        self._model = model
        self._result_topic = result_topic
        self._queue: deque[tuple[Stream, OutgoingRecord]] = deque()
        self._wakeup = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0

    def open(self, job: JobInFlight) -> Stream:
        """A new run of `job`'s chunks (seq from 0)."""
        return Stream(job, self._result_topic(job), uuid.uuid4().hex[:16])

    def add(self, stream: Stream, text: str, tokens: int, version: str | None = None) -> None:
        """Queue the next chunk of `stream` (on the event loop)."""
        if stream.closed:
            return
        job = stream.job
        assert job.job_id is not None  # a job that runs was decoded
        chunk = Chunk(seq=stream.seq, text=text, tokens=tokens, run=stream.run)
        stream.seq += 1
        result = Result(job_id=job.job_id, model=self._model, status="chunk", chunk=chunk, model_version=version,
                        completed_at=time.time())
        attributes = tracing.producer_attributes(stream.topic, job_id=job.job_id) | {tracing.CHUNK_SEQ: chunk.seq}
        span = self._spans.start_child(f"send {stream.topic}", SpanKind.PRODUCER, job.span, attributes)
        self._queue.append((stream, OutgoingRecord(job, stream.topic, encode(result), job.job_id.encode(),
                                                   self._spans.headers(span), span)))
        stream.unanswered += 1
        stream.answered.clear()
        self._wakeup.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_forever(), name="aiaas-chunks")

    async def flush(self, streams: Sequence[Stream]) -> None:
        """Return once every chunk of `streams` added so far has been answered by the broker (sent or failed);
        other jobs' chunks may still be on their way."""
        for stream in streams:
            while stream.unanswered:
                if self._sender is None or self._sender.done():  # it ended (cancelled, a bug): never wait for it
                    return
                await stream.answered.wait()

    async def _send_forever(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queued = list(self._queue)
            self._queue.clear()
            records = [record for _, record in queued]
            try:
                errors = await self._send(records)
            finally:  # every chunk taken is answered, even when this task is cancelled
                for stream, _ in queued:
                    stream.unanswered -= 1
                    if not stream.unanswered:
                        stream.answered.set()
            for record, error in zip(records, errors, strict=True):
                record.close(error)
                if error is None:
                    self.sent += 1
                else:
                    self.failed += 1
            if any(errors):
                log.warning("%d chunk(s) were not delivered (%s); their jobs' final results still carry the "
                            "whole text", sum(e is not None for e in errors), next(e for e in errors if e))

    async def _send(self, records: list[OutgoingRecord]) -> list[BaseException | None]:
        try:
            return await send_records(self._sink, records)
        except Exception as exc:  # noqa: BLE001 - chunks are progress: a failure never stops the sender
            return [exc] * len(records)
