"""aiaas: AI models served as event-driven async microservices over Apache Kafka.

The shared core lives here (contracts, codec, topics, settings, tracing, worker, registry,
client, CLI); each model type is a subpackage with its own service entry point
(`python -m aiaas.vision`).
"""

from .client import AiaasClient, JobHandle
from .contracts import ErrorInfo, Job, Result, Tensor, Timings

__all__ = ["AiaasClient", "JobHandle", "Job", "Result", "Tensor", "ErrorInfo", "Timings"]
__version__ = "0.1.0"
