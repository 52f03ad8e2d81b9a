"""Benchmark jobs for the text service: one labelled sentence each, to classify."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from aiaas.contract.envelopes import InputValue

__all__ = ["payloads", "load_runtime"]


def payloads(registry: Any, rng: random.Random) -> Callable[[], tuple[dict[str, InputValue], str | None]]:
    """One job's (inputs, task) per call: a sentence drawn from the project's labelled sentences."""
    from aiaas.text.labelled_sentences import SENTENCES

    pool = [s for group in SENTENCES.values() for s in group]
    return lambda: ({"texts": [rng.choice(pool)]}, "classify")


def load_runtime(registry: Any, ref: str = "production", **kwargs: Any) -> Any:
    """The runtime as the service loads it (`kwargs`: its options; the benchmarks add the service's limits and
    precision, bench/workloads.py)."""
    from aiaas.text.runtime import TextRuntime

    return TextRuntime.from_registry(registry, ref, **kwargs)
