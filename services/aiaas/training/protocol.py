"""What a model type provides to the trainer process (no Kafka here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from aiaas.contract.envelopes import TrainingProgress
from aiaas.registry.store import ModelVersion, Registry
from aiaas.training.request import TrainingRequest
from aiaas.training.stopping import StopSignal

__all__ = ["ModelTrainer", "Candidate", "ProgressCallback", "ScoredOn", "SCORED_ON", "scored_on_job_data"]

ProgressCallback = Callable[[TrainingProgress], None]
"""Called from the training thread after each epoch (thread-safe on the receiving side)."""

ScoredOn = Literal["reference", "job_data"]
"""What a candidate's metrics were measured on. `reference`: evaluation data the job could not choose
(the built-in held-out set, none of it in the job's training data). `job_data`: data the job brought
(a hold-out of its own data, or reference data it also trained on); such a version is never promoted
to `production` automatically, as its score says nothing about the data production serves."""

SCORED_ON = "scored_on"
"""The key of a registered version's `params` that records its ScoredOn (written by the trainer service)."""


def scored_on_job_data(version: ModelVersion) -> bool:
    """Whether `version` was scored on a job's own data; a version trained from it inherits that."""
    return version.params.get(SCORED_ON) == "job_data"


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
    scored_on: ScoredOn = "job_data"
    """Defaults to the cautious answer: a trainer must say its evaluation is independent of the job."""
    output_profile: dict[str, float] = field(default_factory=dict)
    """Share of each output category on the evaluation set (`ModelVersion.output_profile`, for model monitoring)."""


class ModelTrainer(Protocol):
    """Trains one model type for a TrainingRequest."""

    model: str
    metric: str
    """The evaluation metric the promotion policy compares (higher is better).

    A trainer with hyper-parameters of its own (beyond epochs, learning_rate, batch_size, seed) names them in
    `hyper_parameters` (name → int or float): jobs may set them, and they reach `request.params` checked."""

    def train(self, request: TrainingRequest, registry: Registry, workdir: Path,
              progress: ProgressCallback, stop: StopSignal | None = None) -> Candidate:
        """Check the request's data (raise InvalidJob), train, export into `workdir`, evaluate.

        Call `stop.check()` at every optimiser step and between phases: it raises when the run must end.
        """
        ...
