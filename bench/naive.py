"""The naive consumer: what a user writes first with FastStream, one message at a time.

One `@broker.subscriber` handler per message: `decode_job` → `runtime.prepare` →
`runtime.infer([item])` (on the event loop) → `await broker.publish(encode(result), ...)`.
No batching, no pipelining, no tracing, FastStream's default offset handling; the same model
runtime as the service. Two things it must do to be measurable at all: key the result by
the job id (the client matches results by key) and start a new group at the earliest
offset (`auto_offset_reset="earliest"`), so jobs published while it joins are not skipped.

Run as a child process by run.py: `python bench/naive.py --model vision` (broker, topic
prefix and registry from the usual AIAAS_* variables); it logs "naive consumer ready: …".
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faststream.kafka import KafkaBroker

from aiaas.contract.codec import decode_job, encode
from aiaas.contract.envelopes import Result
from aiaas.contract.topics import ModelTopics
from aiaas.registry.store import Registry
from aiaas.settings import HomeSettings, KafkaSettings
from bench.workloads import MODELS, load_runtime

__all__ = ["naive_app"]


def naive_app(model: str, kafka: KafkaSettings, registry: Registry) -> KafkaBroker:
    """A FastStream broker with the one-message handler for `model`."""
    runtime = load_runtime(model, registry)
    topics = ModelTopics.of(model, kafka.topic_prefix)
    broker = KafkaBroker(kafka.bootstrap_servers)

    @broker.subscriber(topics.infer, group_id=f"{kafka.topic_prefix}.{model}.naive", auto_offset_reset="earliest")
    async def handle(body: bytes) -> None:
        job = decode_job(body, kafka.max_message_bytes)
        item = runtime.prepare(job)
        (outputs,) = runtime.infer([item])
        if isinstance(outputs, Exception):  # the runtime refused the item on its batch-wide checks
            raise outputs
        result = Result(job_id=job.job_id, model=model, status="ok", outputs=outputs, model_version=runtime.version)
        await broker.publish(encode(result), topic=topics.results, key=job.job_id.encode())

    return broker


async def _serve(model: str) -> None:
    kafka = KafkaSettings()
    broker = naive_app(model, kafka, Registry(HomeSettings().registry_dir))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await broker.start()
    print(f"naive consumer ready: {model} on {ModelTopics.of(model, kafka.topic_prefix).infer}", flush=True)
    await stopping.wait()
    await broker.stop()


def main() -> None:
    """Child process entry point."""
    parser = argparse.ArgumentParser(description="naive one-message-at-a-time FastStream consumer")
    parser.add_argument("--model", choices=MODELS, required=True)
    asyncio.run(_serve(parser.parse_args().model))


if __name__ == "__main__":
    main()
