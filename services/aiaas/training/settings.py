"""Settings of a trainer process (prefix `AIAAS_TRAINER_`)."""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["TrainerSettings"]


class TrainerSettings(BaseSettings):
    """Attempts, data limits and promotion for the trainers."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_TRAINER_", extra="ignore")

    group_id: str | None = Field(None, description="Consumer group; default `<prefix>.<model>.trainer`.")
    max_attempts: int = Field(3, ge=1, description="Starts of one job before it ends `failed` (trainer kept dying).")
    max_data_bytes: int = Field(256 * 1024 * 1024, ge=1, description="Largest training data file accepted.")
    promote: Literal["auto", "always", "never"] = Field(
        "auto", description="`auto`: production when the eval metric is at least production's; else staging."
    )
    min_delta: float = Field(0.0, description="With `auto`: how much better than production a version must be.")
    threads: int = Field(
        1, ge=1, description="CPU threads for training: one is fastest for these small models and leaves cores to serving."
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1000,
        description="Kafka's max.poll.interval.ms for the trainer: the paused consumer polls well within it.",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="While a job trains, how often the consumer polls (paused) to stay in its group."
    )
