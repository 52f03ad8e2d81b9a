"""What each model type is fed: job payloads, the runtime that serves them, its settings class.

* vision: held-out digits (`aiaas.vision.data.load_split().test_x`), one [8, 8] image per job;
* text: `classify` jobs, one labelled sentence (`SENTENCES`) per job;
* recsys: `recommend` jobs (k 10) for users drawn at random among those the model knows.

The same payloads feed every stage (runtime ceiling, transport, naive consumer, service), so
the messages on the wire have the same size everywhere.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiaas.contract.envelopes import InputValue, Job, Tensor, new_job_id
from aiaas.registry.store import Registry
from aiaas.settings import WorkerSettings
from bench.procs import LocalBroker, stop_all

__all__ = ["MODELS", "Payload", "payloads", "as_jobs", "load_runtime", "settings_class", "payload_stream"]

MODELS = ("vision", "text", "recsys")


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
    rng = random.Random(seed)
    count = 0
    if model == "vision":
        from aiaas.vision.data import load_split

        images = [Tensor.from_numpy(image[0]) for image in load_split().test_x]  # [8, 8] float32, 0..16
        make = lambda: Payload({"image": images[count % len(images)]})  # noqa: E731
    elif model == "text":
        from aiaas.text.labelled_sentences import SENTENCES

        pool = [s for group in SENTENCES.values() for s in group]
        make = lambda: Payload({"texts": [rng.choice(pool)]}, task="classify")  # noqa: E731
    elif model == "recsys":
        n_users = _recsys_users(registry)
        make = lambda: Payload({"user_id": rng.randrange(n_users), "k": 10}, task="recommend")  # noqa: E731
    else:
        raise ValueError(f"unknown model {model!r}; one of {', '.join(MODELS)}")
    while n is None or count < n:
        yield make()
        count += 1


def _recsys_users(registry: Registry) -> int:
    """Users the production recsys model was trained on (ids 0..n-1), from its recorded data config."""
    from aiaas.recsys.data import RatingsConfig

    data = registry.resolve("recsys", "production").params.get("data")
    return int(data["n_users"]) if isinstance(data, dict) and "n_users" in data else RatingsConfig().n_users


def as_jobs(model: str, items: list[Payload]) -> list[Job]:
    """Job envelopes for the payloads (what a runtime's `prepare` takes)."""
    return [Job(job_id=new_job_id(), model=model, task=p.task, inputs=dict(p.inputs)) for p in items]


def settings_class(model: str) -> type[WorkerSettings]:
    """The model service's settings class (its env prefix and defaults: max_batch etc.)."""
    if model == "vision":
        from aiaas.vision.settings import VisionSettings

        return VisionSettings
    if model == "text":
        from aiaas.text.settings import TextSettings

        return TextSettings
    from aiaas.recsys.settings import RecsysSettings

    return RecsysSettings


_measured_call_overhead: dict[tuple[Any, ...], int] = {}
"""The call cost the first text runtime per (backend, precision, threads) measured, where none is set: the sweep,
the rounds, the FLOP count and the profile of one run cut their length groups alike."""


def load_runtime(model: str, registry: Registry, ref: str = "production", **kwargs: Any) -> Any:
    """The model's runtime loaded from the registry as its service loads it (`backend=` for text).

    Text takes the service's limits (AIAAS_TEXT_CALL_OVERHEAD_TOKENS among them: how its length groups are cut)
    and on ONNX Runtime its precision (AIAAS_TEXT_PRECISION; its other settings keep their defaults here), so the
    naive consumer and the runtime ceiling run the graph and the calls the service runs."""
    if model == "vision":
        from aiaas.vision.runtime import VisionRuntime

        return VisionRuntime.from_registry(registry, ref, **kwargs)
    if model == "text":
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
    from aiaas.recsys.runtime import RecsysRuntime

    return RecsysRuntime.from_registry(registry, ref, **kwargs)


def build_model(model: str, registry: Registry) -> None:
    """Train/export and register `model` (production) with the project's own trainer."""
    if model == "vision":
        from aiaas.vision.trainer import build
    elif model == "text":
        from aiaas.text.trainer import build
    else:
        from aiaas.recsys.trainer import build
    build(registry)


@contextmanager
def built_model_and_broker(model: str, port: int, prefix: str) -> Iterator[tuple[Path, LocalBroker, Registry]]:
    """A fresh temporary folder, `model` built into its registry (`<tmp>/home/registry`) and a local broker on
    `port` (`<tmp>/kafka`); on leaving, everything bench/procs.py started is stopped."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    broker = LocalBroker(port, tmp / "kafka")
    try:
        registry = Registry(tmp / "home" / "registry")
        build_model(model, registry)
        broker.start()
        yield tmp, broker, registry
    finally:
        stop_all()
