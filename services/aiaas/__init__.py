"""aiaas: AI models served as event-driven async microservices over Apache Kafka.

The layers, each a package that imports only those before it: `contract/` (what travels on the wire),
`kafka/` (Kafka plumbing), `tracing/`, `registry/`, then `serving/` and `training/`, then `client/` and
`cli/`. `errors.py` and `settings.py` sit under all of them. Each model type is a package of its own
(`vision/`, `text/`, `recsys/`) with its service entry point (`python -m aiaas.vision`).

The public names below load on first use, so that importing a model definition
(`aiaas.vision.model`, `aiaas.text.encoder`) needs only its own libraries, not the Kafka client.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["AiaasClient", "JobHandle", "Job", "Result", "Tensor", "ErrorInfo", "Timings"]
__version__ = "0.1.0"

_HOMES = {"AiaasClient": "client", "JobHandle": "client", "Job": "contract.envelopes", "Result": "contract.envelopes",
          "Tensor": "contract.envelopes", "ErrorInfo": "contract.envelopes", "Timings": "contract.envelopes"}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'aiaas' has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
