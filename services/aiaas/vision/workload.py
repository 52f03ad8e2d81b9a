"""Benchmark jobs for the vision service: the held-out digits, in turn."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from aiaas.contract.envelopes import InputValue, Tensor

__all__ = ["payloads", "load_runtime"]


def payloads(registry: Any, rng: random.Random) -> Callable[[], tuple[dict[str, InputValue], str | None]]:
    """One job's (inputs, task) per call: each held-out digit ([8, 8] float32, 0..16) in turn."""
    from aiaas.vision.data import load_split

    images = [Tensor.from_numpy(image[0]) for image in load_split().test_x]
    turn = iter(range(1 << 62))
    return lambda: ({"image": images[next(turn) % len(images)]}, None)


def load_runtime(registry: Any, ref: str = "production", **kwargs: Any) -> Any:
    """The runtime as the service loads it (`kwargs`: its options, e.g. `intra_op_threads`)."""
    from aiaas.vision.runtime import VisionRuntime

    return VisionRuntime.from_registry(registry, ref, **kwargs)
