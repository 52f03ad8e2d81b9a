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
        "a batch's call is short and handing it to a thread and back costs more than the thread wins (bench/ab.py; "
        "tables in bench/results/); on a model thread on a GPU.",
    )
