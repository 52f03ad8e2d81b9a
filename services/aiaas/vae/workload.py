"""Benchmark jobs for the vae service: each held-out digit scored in turn, and one generated digit every tenth job."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from aiaas.contract.envelopes import InputValue, Tensor

__all__ = ["payloads", "load_runtime"]

_GENERATE_EVERY = 10


def payloads(registry: Any, rng: random.Random) -> Callable[[], tuple[dict[str, InputValue], str | None]]:
    """One job's (inputs, task) per call: `anomaly_score` of each held-out digit in turn ([8, 8] float32, 0..16),
    and every tenth job a `generate` of one digit (random digit and seed), so both routes of the graph run."""
    from aiaas.vision.data import load_split

    images = [Tensor.from_numpy(image[0]) for image in load_split().test_x]
    turn = iter(range(1 << 62))

    def make() -> tuple[dict[str, InputValue], str | None]:
        index = next(turn)
        if index % _GENERATE_EVERY == _GENERATE_EVERY - 1:
            return {"n": 1, "digit": rng.randrange(10), "seed": rng.randrange(1 << 31)}, "generate"
        return {"image": images[index % len(images)]}, "anomaly_score"

    return make


def load_runtime(registry: Any, ref: str = "production", **kwargs: Any) -> Any:
    """The runtime as the service loads it (`kwargs`: its options, e.g. `intra_op_threads`)."""
    from aiaas.vae.runtime import VaeRuntime

    return VaeRuntime.from_registry(registry, ref, **kwargs)
