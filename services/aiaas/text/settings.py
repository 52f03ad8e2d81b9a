"""Settings of the text service (prefix `AIAAS_TEXT_`)."""

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from aiaas.settings import WorkerSettings

if TYPE_CHECKING:
    from aiaas.text.runtime import TextLimits

__all__ = ["TextSettings"]


class TextSettings(WorkerSettings):
    """Batching, limits and backend choice for the text service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_TEXT_", extra="ignore")

    max_batch: int = Field(32, ge=1, le=4096, description="Most jobs in one model call.")
    model_instances: int = Field(
        2, ge=1, le=64,
        description="Batches in the encoder at once, each on its own thread with the cores shared out (the worker "
        "setting). Two by default for ONNX Runtime: two answer more jobs a second than one and keep latency lower "
        "under load, while a job alone is a little slower (measured on CPU cores only by bench/ab.py; tables in "
        "bench/results/). One for the torch backend unless set: PyTorch's callers share one thread pool.",
    )
    backend: Literal["onnx", "torch"] = Field(
        "onnx", description="`onnx`: the exported graph under ONNX Runtime; `torch`: the same model in PyTorch."
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="`fp32`: the encoder as exported; `int8`: its int8-weight graph on the CPU (ONNX "
        "Runtime only): more throughput on a CPU with VNNI (bench/ab.py; tables in bench/results/), and embeddings "
        "close to fp32's (one-word texts move most) that move slightly with the batch they share. Each text version "
        "records its lowest cosine to fp32 (`int8_cosine_min`).",
    )
    max_seq_len: int = Field(128, ge=8, le=512, description="Tokens per text; longer texts are cut and flagged.")
    max_texts_per_job: int = Field(64, ge=1, description="Most texts one job may carry (per input list).")
    max_chars_per_text: int = Field(2000, ge=1, description="Longest text accepted, in characters.")
    max_batch_tokens: int = Field(
        8192, ge=64, description="Most token slots (rows × longest) in one encoder call; bigger batches are split."
    )
    call_overhead_tokens: int | None = Field(
        None, ge=0, le=8192,
        description="The fixed cost of one encoder call in token slots: a longer text joins a length group unless "
        "that adds more padding than this. Unset: measured on a CPU encoder at start, 256 on a GPU (not measured "
        "there yet); the log line says which (bench/text_padding.py times the choice).",
    )

    def limits(self) -> "TextLimits":
        """What one job may carry and how the encoder's calls are cut, as the runtime takes them."""
        from aiaas.text.runtime import TextLimits

        return TextLimits(self.max_texts_per_job, self.max_chars_per_text, self.max_batch_tokens,
                          self.call_overhead_tokens)

    @model_validator(mode="after")
    def _one_instance_for_torch(self) -> "TextSettings":
        """The torch backend runs one instance unless told otherwise (PyTorch's callers share one thread pool)."""
        if self.backend == "torch" and "model_instances" not in self.model_fields_set:
            self.model_instances = 1
        return self
