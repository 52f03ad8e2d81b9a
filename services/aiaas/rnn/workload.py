"""Benchmark jobs for the rnn service: the next 10 items after prefixes of held-out sessions."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from aiaas.contract.envelopes import InputValue, Tensor

__all__ = ["payloads", "load_runtime"]


def payloads(registry: Any, rng: random.Random) -> Callable[[], tuple[dict[str, InputValue], str | None]]:
    """One job's (inputs, task) per call: a random prefix of a held-out session of the data production was trained
    on (every length real traffic has, so the runtime's length groups are measured too), k = 10."""
    from aiaas.rnn.sessions import load_split, next_item_examples

    prefixes = [Tensor.from_numpy(prefix) for prefix in next_item_examples(load_split(_config(registry)).test)[0]]
    return lambda: ({"items": prefixes[rng.randrange(len(prefixes))], "k": 10}, "next_items")


def _config(registry: Any) -> Any:
    """The generated sessions' config the production rnn model recorded; the default one for a version trained on a
    job's own sessions (the held-out sessions of the default config are as good a workload)."""
    from aiaas.rnn.sessions import SessionsConfig

    data = registry.resolve("rnn", "production").params.get("data")
    names = {field.name for field in dataclasses.fields(SessionsConfig)}
    return SessionsConfig(**data) if isinstance(data, dict) and set(data) == names else SessionsConfig()


def load_runtime(registry: Any, ref: str = "production", **kwargs: Any) -> Any:
    """The runtime as the service loads it (`kwargs`: its options, e.g. `intra_op_threads`), with the service's
    limits unless given (AIAAS_RNN_CALL_OVERHEAD_SLOTS among them: how its length groups are cut)."""
    from aiaas.rnn.runtime import RnnRuntime
    from aiaas.rnn.settings import RnnSettings

    kwargs.setdefault("limits", RnnSettings().limits())
    return RnnRuntime.from_registry(registry, ref, **kwargs)
