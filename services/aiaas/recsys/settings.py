"""Settings of the recsys service (prefix `AIAAS_RECSYS_`)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiaas.settings import ModelCalls, WorkerSettings

__all__ = ["RecsysSettings"]


class RecsysSettings(WorkerSettings):
    """Batching, limits and runtime choice for the recsys service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_RECSYS_", extra="ignore")

    max_batch: int = Field(
        256, ge=1, le=4096,
        description="Most jobs in one model call. A recsys job costs the model little, so a batch's fixed costs (the "
        "session run, its produce requests, its span) weigh: batches of 256 with their window of 1,024 answer more "
        "jobs a second than 64 with 256 (bench/ab.py; tables in bench/results/).",
    )

    intra_op_threads: int = Field(
        1, ge=0,
        description="ONNX Runtime intra-op threads (0: one per core). One: this model is small, a batch gains "
        "little from more, and they would take the cores the service's event loop needs (bench/hotpath.py).",
    )

    max_k: int = Field(100, ge=1, description="Largest `k` a job may ask for (capped at the number of items).")

    model_calls: ModelCalls = Field(
        "auto",
        description="Where the model's batch calls run (see WorkerSettings). `auto`: on the event loop on a CPU, where "
        "a batch's call is short and mostly Python that holds the GIL anyway, so a thread adds a hand-over and wins "
        "nothing (bench/ab.py; tables in bench/results/); on a thread on a GPU.",
    )
