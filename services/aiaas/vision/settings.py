"""Settings of the vision service (prefix `AIAAS_VISION_`)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiaas.settings import ModelCalls, WorkerSettings

__all__ = ["VisionSettings"]


class VisionSettings(WorkerSettings):
    """Batching, limits and runtime choice for the vision service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_VISION_", extra="ignore")

    intra_op_threads: int = Field(
        1, ge=0,
        description="ONNX Runtime intra-op threads (0: one per core). One: this model is small, a batch gains "
        "little from more, and they would take the cores the service's event loop needs (bench/hotpath.py).",
    )

    model_calls: ModelCalls = Field(
        "auto",
        description="Where the model's batch calls run (see WorkerSettings). `auto`: on the event loop on a CPU, where "
        "a batch takes the model about a millisecond and handing it to a thread and back costs more (2 cores, side by "
        "side: 1.15x the saturated jobs/s, p50 at 25/50/75 % load 0.77/0.77/0.80x; bench/results); on a model thread "
        "on a GPU.",
    )
