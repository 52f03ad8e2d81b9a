"""Transport ceiling: the real service machinery with a no-op model.

`NoopRuntime` answers every job with empty outputs at once, so what is left is the Kafka
path: client publish → broker → `ModelService` (fetch, decode and validate the envelope,
batch, tracing spans, publish the result with acks=all, commit) → broker → client receipt.

Run as a child process (`python bench/transport.py --model vision`, the default in run.py:
client and service in separate processes, as with the real service) or in the benchmark's
own process (`run_inprocess`, `--transport inprocess`). Either way it is
`ModelService(NoopRuntime(model, <the providers the model would use>), KafkaSettings(), <Model>Settings()).run()`
in an asyncio task, stopped with `.stop()`, with the tracing that `aiaas.tracing.setup_tracing` installs; the child
process also settles its heap as a service process does (`aiaas.heap`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.contract.envelopes import Job
from aiaas.serving.heap import settle_heap
from aiaas.serving.onnx_session import choose_providers
from aiaas.serving.runtime import Outputs
from aiaas.serving.service import ModelService
from aiaas.settings import KafkaSettings
from bench.workloads import MODELS, settings_class

__all__ = ["NoopRuntime", "start_inprocess"]


class NoopRuntime:
    """A ModelRuntime that does nothing: model name = the model type, version "0". `providers`: where the real
    model would compute, so the worker runs its calls where it would run the real model's (`model_calls`)."""

    def __init__(self, model: str, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        self.model = model
        self.version = "0"
        self.providers = list(providers)

    def serves(self, ref: str) -> bool:
        """Only its own version."""
        return ref in ("0", "v0")

    def prepare(self, job: Job) -> Any:
        """No checks. Not None: the worker treats a None item as "nothing to run" and sends no result."""
        return True

    def infer(self, items: Sequence[Any]) -> list[Outputs]:
        """Empty outputs for every job."""
        return [{}] * len(items)


def start_inprocess(model: str, kafka: KafkaSettings) -> tuple[ModelService, asyncio.Task]:
    """The no-op service as a task of the running loop (the caller's tracer provider applies)."""
    settings = settings_class(model)()
    service = ModelService(NoopRuntime(model, choose_providers(settings.execution_provider)), kafka, settings)
    return service, asyncio.create_task(service.run(), name=f"noop-{model}")


async def _serve(model: str) -> None:
    service, task = start_inprocess(model, KafkaSettings())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await task


def main() -> None:
    """Child process: tracing as a service sets it up (OTEL_* honoured), serve until SIGTERM."""
    from aiaas.tracing.setup import setup_tracing

    parser = argparse.ArgumentParser(description="no-op model service (transport ceiling)")
    parser.add_argument("--model", choices=MODELS, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = setup_tracing(f"aiaas-{args.model}")
    settle_heap(settings_class(args.model)().gc_young_threshold)  # as `run_service` does
    try:
        asyncio.run(_serve(args.model))
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
