"""What each model type is fed: job payloads (each type's `workload` module, `aiaas.model_types`), the runtime
that serves them, its settings class.

The same payloads feed every stage (runtime ceiling, transport, naive consumer, service), so
the messages on the wire have the same size everywhere.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiaas.contract.envelopes import InputValue, Job, new_job_id
from aiaas.model_types import BUILT_IN, model_type
from aiaas.registry.store import Registry
from aiaas.settings import WorkerSettings
from bench.procs import LocalBroker, stop_all

__all__ = ["MODELS", "Payload", "payloads", "as_jobs", "load_runtime", "settings_class", "payload_stream"]

MODELS = tuple(model.name for model in BUILT_IN if not model.generative)
"""The model types the batch benchmarks know how to start and load (`aiaas.<model>`): the built-in ones that answer
in one result (the LLM has its own: `bench/llm_engine.py`)."""


@dataclass(frozen=True)
class Payload:
    """One job's task and inputs (what `AiaasClient.submit` takes)."""

    inputs: dict[str, InputValue]
    task: str | None = None


def payloads(model: str, n: int, registry: Registry, seed: int = 0) -> list[Payload]:
    """`n` payloads for `model`, the same for the same seed."""
    return list(_generator(model, registry, seed, n))


def payload_stream(model: str, registry: Registry, seed: int = 0) -> Iterator[Payload]:
    """An endless stream of payloads (open-loop load does not know its length up front)."""
    return _generator(model, registry, seed, None)


def _generator(model: str, registry: Registry, seed: int, n: int | None) -> Iterator[Payload]:
    make = model_type(model).module("workload").payloads(registry, random.Random(seed))
    count = 0
    while n is None or count < n:
        inputs, task = make()
        yield Payload(inputs, task)
        count += 1


def as_jobs(model: str, items: list[Payload]) -> list[Job]:
    """Job envelopes for the payloads (what a runtime's `prepare` takes)."""
    return [Job(job_id=new_job_id(), model=model, task=p.task, inputs=dict(p.inputs)) for p in items]


def settings_class(model: str) -> type[WorkerSettings]:
    """The model service's settings class (its env prefix and defaults: max_batch etc.)."""
    return model_type(model).settings()


_measured_call_overhead: dict[tuple[Any, ...], int] = {}
"""The call cost the first text runtime per (backend, precision, threads) measured, where none is set: the sweep,
the rounds, the FLOP count and the profile of one run cut their length groups alike."""


def load_runtime(model: str, registry: Registry, ref: str = "production", **kwargs: Any) -> Any:
    """The model's runtime loaded from the registry as its service loads it: its `workload.load_runtime`.

    Text (`backend=` onnx or torch) takes the service's limits (AIAAS_TEXT_CALL_OVERHEAD_TOKENS among them: how its
    length groups are cut) and on ONNX Runtime its precision (AIAAS_TEXT_PRECISION; its other settings keep their
    defaults here), so the naive consumer and the runtime ceiling run the graph and the calls the service runs."""
    if model != "text":
        return model_type(model).module("workload").load_runtime(registry, ref, **kwargs)
    from aiaas.text.runtime import TextRuntime
    from aiaas.text.settings import TextSettings

    settings = TextSettings()
    if kwargs.get("backend", "onnx") == "onnx":
        kwargs.setdefault("precision", settings.precision)
    key = (kwargs.get("backend", "onnx"), kwargs.get("precision"), kwargs.get("intra_op_threads", 0))
    limits = settings.limits()
    if limits.call_overhead_tokens is None and key in _measured_call_overhead:
        limits = replace(limits, call_overhead_tokens=_measured_call_overhead[key])
    kwargs.setdefault("limits", limits)
    runtime = TextRuntime.from_registry(registry, ref, **kwargs)
    if settings.call_overhead_tokens is None:
        _measured_call_overhead.setdefault(key, runtime.limits.call_overhead_tokens)
    return runtime


def build_model(model: str, registry: Registry) -> None:
    """Train/export and register `model` (production) with the project's own trainer."""
    model_type(model).build(registry)


@contextmanager
def built_model_and_broker(model: str, port: int, prefix: str) -> Iterator[tuple[Path, LocalBroker, Registry]]:
    """A fresh temporary folder, `model` built into its registry (`<tmp>/home/registry`) and a local broker on
    `port` (`<tmp>/kafka`); on leaving, everything the harness (tests/harness.py) started is stopped and the folder
    removed (a run's broker data takes gigabytes). A run that failed or was interrupted keeps it, less the broker's
    data, for its logs."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    broker = LocalBroker(port, tmp / "kafka")
    failed = True
    try:
        registry = Registry(tmp / "home" / "registry")
        build_model(model, registry)
        broker.start()
        yield tmp, broker, registry
        failed = False
    finally:
        try:
            stop_all()
        finally:
            shutil.rmtree(tmp / "kafka" / "data" if failed else tmp, ignore_errors=True)
            if failed:
                print(f"the run failed or was interrupted: its logs (broker, services) are kept in {tmp}",
                      file=sys.stderr)
