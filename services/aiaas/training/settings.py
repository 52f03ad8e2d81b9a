"""Settings of a trainer process (prefix `AIAAS_TRAINER_`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from aiaas.settings import HomeSettings, MetricsEndpointSettings

__all__ = ["TrainerSettings"]


def _default_data_roots() -> list[Path]:
    return [HomeSettings().home / "data"]


class TrainerSettings(MetricsEndpointSettings):
    """Attempts, limits on what a job may ask for, and promotion, for the trainers."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_TRAINER_", extra="ignore")

    group_id: str | None = Field(None, description="Consumer group; default `<prefix>.<model>.trainer`.")
    max_attempts: int = Field(3, ge=1, description="Starts of one job before it ends `failed` (trainer kept dying).")
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=_default_data_roots,
        description="Folders a job's `data_uri` may name files in (default `<AIAAS_HOME>/data`). Symlinks are "
        "resolved before the check, so a link inside a root to a file outside is refused. In the environment: "
        "a JSON list or folders separated by `:` (`;` on Windows). A relative `data_uri` is taken inside the "
        "first root.",
    )
    max_data_bytes: int = Field(
        256 * 1024 * 1024, ge=1,
        description="Largest training data file accepted, and the most its arrays may unpack to (compressed NPZ, "
        "Parquet); at most this many bytes are read, whatever the file system says its size is.",
    )
    max_data_rows: int = Field(
        250_000, ge=1, description="Most rows (images, sentences, ratings) a job's data may hold, inline or in a file."
    )
    max_epochs: int = Field(
        1000, ge=1,
        description="Largest `epochs` a job may ask for (recsys: optimiser steps). Jobs that do not ask get their "
        "model type's default (vision 25, text 300, recsys 100, vae 40, rnn 3).",
    )
    max_batch_size: int = Field(4096, ge=1, description="Largest `batch_size` a job may ask for.")
    max_train_s: float = Field(
        3600.0, gt=0,
        description="Wall-time limit of one job, from reading its data to its evaluated model: past it, training "
        "stops at its next step and the job ends `failed` (`TimeLimitExceeded`, with a dead letter).",
    )
    stop_grace_s: float = Field(
        10.0, gt=0,
        description="How long a training run that is told to stop (time limit, SIGTERM) may take to reach its next "
        "step; after that the trainer leaves it behind and goes on (a run cannot be killed, only abandoned).",
    )
    promote: Literal["auto", "always", "never"] = Field(
        "auto",
        description="`auto`: production when the eval metric is at least production's; else staging. A version "
        "scored on the job's own data goes to staging whatever this says.",
    )
    min_delta: float = Field(0.0, description="With `auto`: how much better than production a version must be.")
    threads: int = Field(
        1, ge=1,
        description="CPU threads for training: one is fastest for these small models and leaves cores to serving.",
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1000,
        description="Kafka's max.poll.interval.ms for the trainer: the paused consumer polls well within it.",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="While a job trains, how often the consumer polls (paused) to stay in its group."
    )

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # A PATH-like list is what an operator writes in an environment variable; JSON works too.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value
