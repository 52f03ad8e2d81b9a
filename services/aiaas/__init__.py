"""aiaas: AI models served as event-driven async microservices over Apache Kafka.

The shared core lives here (contracts, codec, topics, settings, tracing, worker, registry,
client, CLI); each model type is a subpackage with its own service entry point
(`python -m aiaas.vision`).

The public names below load on first use, so that importing a model definition
(`aiaas.vision.model`, `aiaas.text.encoder`) needs only its own libraries, not the Kafka client.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["AiaasClient", "JobHandle", "Job", "Result", "Tensor", "ErrorInfo", "Timings"]
__version__ = "0.1.0"

_HOMES = {"AiaasClient": "client", "JobHandle": "client", "Job": "contracts", "Result": "contracts",
          "Tensor": "contracts", "ErrorInfo": "contracts", "Timings": "contracts"}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'aiaas' has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
