"""Settings of the text service (prefix `AIAAS_TEXT_`)."""

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ..settings import WorkerSettings

__all__ = ["TextSettings"]


class TextSettings(WorkerSettings):
    """Batching, limits and backend choice for the text service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_TEXT_", extra="ignore")

    max_batch: int = Field(32, ge=1, le=4096, description="Most jobs in one model call.")
    backend: Literal["onnx", "torch"] = Field(
        "onnx", description="`onnx`: the exported graph under ONNX Runtime; `torch`: the same model in PyTorch."
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="`fp32`: the encoder as exported; `int8`: its int8-weight graph on the CPU (ONNX "
        "Runtime only): ~1.7x the service's throughput on a 2-core VNNI CPU; embeddings within a cosine of "
        "~0.99 of fp32 (~0.95 for one-word texts) that move slightly with the batch they share.",
    )
    max_seq_len: int = Field(128, ge=8, le=512, description="Tokens per text; longer texts are cut and flagged.")
    max_texts_per_job: int = Field(64, ge=1, description="Most texts one job may carry (per input list).")
    max_chars_per_text: int = Field(2000, ge=1, description="Longest text accepted, in characters.")
    max_batch_tokens: int = Field(
        8192, ge=64, description="Most token slots (rows × longest) in one encoder call; bigger batches are split."
    )
