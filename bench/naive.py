"""The naive consumer: what a user writes first with FastStream, one message at a time.

One `@broker.subscriber` handler per message: `decode_job` → `runtime.prepare` →
`runtime.infer([item])` (on the event loop) → `await broker.publish(encode(result), ...)`.
No batching, no pipelining, no tracing, FastStream's default offset handling; the same model
runtime as the service. Two things it must do to be measurable at all: key the result by
the job id (the client matches results by key) and start a new group at the earliest
offset (`auto_offset_reset="earliest"`), so jobs published while it joins are not skipped.

For the LLM (`--model llm`, run by llm_service.py) the handler is what the same user writes with Transformers:
the chat template, then `model.generate()` for that one job (greedy, its `max_tokens`), the whole answer in one
result (no chunks). `generate()` runs on a thread (`asyncio.to_thread`), not on the event loop: a generation
takes seconds, and a loop held that long misses the consumer group's heartbeats and is thrown out of the group,
which would measure rebalances rather than generation.

Run as a child process by run.py: `python bench/naive.py --model vision` (broker, topic
prefix and registry from the usual AIAAS_* variables); it logs "naive consumer ready: …".
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faststream.kafka import KafkaBroker

from aiaas.contract.codec import decode_job, encode
from aiaas.contract.envelopes import Job, Result
from aiaas.contract.topics import ModelTopics
from aiaas.registry.store import Registry
from aiaas.settings import HomeSettings, KafkaSettings
from bench.workloads import MODELS, load_runtime

__all__ = ["naive_app", "naive_llm_app"]


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


def naive_llm_app(kafka: KafkaSettings, registry: Registry) -> KafkaBroker:
    """A FastStream broker whose handler answers each LLM chat job with one `generate()` call."""
    import torch

    from aiaas.llm.prompts import chat_prompt_ids
    from aiaas.llm.weights import load_folder, placement

    version = registry.resolve("llm", "production")
    device, dtype = placement()  # where and how the service generates (`auto`)
    model, tokenizer = load_folder(registry.verified_folder(version), device=device, dtype=dtype)
    eos = {model.generation_config.eos_token_id, tokenizer.eos_token_id} - {None}
    topics = ModelTopics.of("llm", kafka.topic_prefix)
    broker = KafkaBroker(kafka.bootstrap_servers)

    def generate(job: Job) -> dict[str, Any]:
        ids = chat_prompt_ids(tokenizer, [m.model_dump() for m in job.messages or ()])
        limit = job.generation.max_tokens if job.generation and job.generation.max_tokens else 512
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids], device=device),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                                 max_new_tokens=limit, do_sample=False)
        new = out[0, len(ids):].tolist()
        return {"text": tokenizer.decode(new, skip_special_tokens=True),
                "finish_reason": "stop" if new and new[-1] in eos else "length",
                "prompt_tokens": len(ids), "completion_tokens": len(new)}

    @broker.subscriber(topics.infer, group_id=f"{kafka.topic_prefix}.llm.naive", auto_offset_reset="earliest")
    async def handle(body: bytes) -> None:
        job = decode_job(body, kafka.max_message_bytes)
        outputs = await asyncio.to_thread(generate, job)
        result = Result(job_id=job.job_id, model="llm", status="ok", outputs=outputs,
                        model_version=str(version.version))
        await broker.publish(encode(result), topic=topics.results, key=job.job_id.encode())

    return broker


async def _serve(model: str) -> None:
    kafka = KafkaSettings()
    registry = Registry(HomeSettings().registry_dir)
    broker = naive_llm_app(kafka, registry) if model == "llm" else naive_app(model, kafka, registry)
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
    parser.add_argument("--model", choices=(*MODELS, "llm"), required=True)
    asyncio.run(_serve(parser.parse_args().model))


if __name__ == "__main__":
    main()
