"""Settings of the vae service (prefix `AIAAS_VAE_`)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiaas.settings import ModelCalls, WorkerSettings

__all__ = ["VaeSettings"]


class VaeSettings(WorkerSettings):
    """Batching, limits and runtime choice for the vae service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_VAE_", extra="ignore")

    intra_op_threads: int = Field(
        1, ge=0,
        description="ONNX Runtime intra-op threads (0: one per core). One, as for vision: the model is small, and more "
        "threads would take the cores the service's event loop needs.",
    )

    max_generate: int = Field(
        64, ge=1, le=1024,
        description="Most images one `generate` job may ask for (`n`): a job's answer is one message, and its model "
        "time is shared by the whole batch.",
    )

    model_calls: ModelCalls = Field(
        "auto",
        description="Where the model's batch calls run (see WorkerSettings). `auto`: on the event loop on a CPU, as "
        "for vision (a batch's call is short); on a model thread on a GPU.",
    )
