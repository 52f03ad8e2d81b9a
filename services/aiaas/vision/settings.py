"""Settings of the vision service (prefix `AIAAS_VISION_`)."""

from pydantic_settings import SettingsConfigDict

from ..settings import WorkerSettings

__all__ = ["VisionSettings"]


class VisionSettings(WorkerSettings):
    """Batching, limits and runtime choice for the vision service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_VISION_", extra="ignore")
