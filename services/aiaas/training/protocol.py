"""What a model type provides to the trainer process (no Kafka here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..contracts import TrainingProgress
from ..registry import Registry
from .request import TrainingRequest

__all__ = ["ModelTrainer", "Candidate", "ProgressCallback"]

ProgressCallback = Callable[[TrainingProgress], None]
"""Called from the training thread after each epoch (thread-safe on the receiving side)."""


@dataclass
class Candidate:
    """A trained, exported and evaluated model, ready to be registered."""

    artifact: Path
    metrics: dict[str, float]
    params: dict[str, object]
    data_hash: str
    companions: tuple[Path, ...] = ()
    parent: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class ModelTrainer(Protocol):
    """Trains one model type for a TrainingRequest."""

    model: str
    metric: str
    """The evaluation metric the promotion policy compares (higher is better)."""

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback) -> Candidate:
        """Check the request's data (raise InvalidJob), train, export into `workdir`, evaluate."""
        ...
