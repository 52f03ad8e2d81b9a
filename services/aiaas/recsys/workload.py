"""Benchmark jobs for the recsys service: top-10 recommendations for a random known user."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from aiaas.contract.envelopes import InputValue

__all__ = ["payloads", "load_runtime"]


def payloads(registry: Any, rng: random.Random) -> Callable[[], tuple[dict[str, InputValue], str | None]]:
    """One job's (inputs, task) per call: a user the production model was trained on (ids 0..n-1), k = 10."""
    n_users = _users(registry)
    return lambda: ({"user_id": rng.randrange(n_users), "k": 10}, "recommend")


def _users(registry: Any) -> int:
    """Users the production recsys model was trained on, from its recorded data config."""
    from aiaas.recsys.data import RatingsConfig

    data = registry.resolve("recsys", "production").params.get("data")
    return int(data["n_users"]) if isinstance(data, dict) and "n_users" in data else RatingsConfig().n_users


def load_runtime(registry: Any, ref: str = "production", **kwargs: Any) -> Any:
    """The runtime as the service loads it (`kwargs`: its options, e.g. `intra_op_threads`)."""
    from aiaas.recsys.runtime import RecsysRuntime

    return RecsysRuntime.from_registry(registry, ref, **kwargs)
