"""Settings of the LLM service (prefix `AIAAS_LLM_`)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiaas.settings import ModelCalls, WorkerSettings

__all__ = ["LlmSettings"]


class LlmSettings(WorkerSettings):
    """Generation limits, continuous batching and chunk streaming for the LLM service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_LLM_", extra="ignore")

    max_batch: int = Field(
        1, ge=1, le=1,
        description="Jobs the pipeline hands over at a time: one (the engine batches them itself: jobs join and "
        "leave its running batch between decode steps).",
    )
    model_instances: int = Field(
        32, ge=1, le=256,
        description="Jobs generating at once: the rows of the engine's running batch (continuous batching). More "
        "rows give more tokens a second in all and fewer to each job (bench/llm_engine.py).",
    )
    model_calls: ModelCalls = Field("thread", description="Generation runs on its own threads (always).")
    max_tokens: int = Field(
        512, ge=1, le=32_768,
        description="Most tokens one job may generate (a job's own `generation.max_tokens` is capped to it, and "
        "is this when unset).",
    )
    max_prompt_tokens: int = Field(
        2048, ge=1, le=32_768, description="Longest prompt (chat template included) a job may have, in tokens.",
    )
    max_batch_tokens: int = Field(
        65_536, ge=1,
        description="Tokens in flight in the engine: the prompt and `max_tokens` of every running job added up (their "
        "KV cache). A job waits while admitting it would pass this.",
    )
    chunk_interval_ms: int = Field(
        50, ge=0, le=10_000,
        description="A job's new text is sent as a chunk at most this often (0: after every token)...",
    )
    chunk_tokens: int = Field(
        16, ge=1, le=4096, description="...or as soon as it holds this many tokens, whichever comes first.",
    )
    device: str = Field("auto", description="PyTorch device: `auto` (CUDA when present), `cpu` or `cuda`.")
