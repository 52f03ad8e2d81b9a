"""Settings of the recsys service (prefix `AIAAS_RECSYS_`)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ..settings import WorkerSettings

__all__ = ["RecsysSettings"]


class RecsysSettings(WorkerSettings):
    """Batching, limits and runtime choice for the recsys service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_RECSYS_", extra="ignore")

    intra_op_threads: int = Field(
        1, ge=0,
        description="ONNX Runtime intra-op threads (0: one per core). One: this model is small, a batch gains "
        "little from more, and they would take the cores the service's event loop needs (bench/hotpath.py).",
    )

    max_k: int = Field(100, ge=1, description="Largest `k` a job may ask for (capped at the number of items).")
