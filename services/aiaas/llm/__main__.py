"""`python -m aiaas.llm`: run the LLM service until SIGTERM/SIGINT."""

from aiaas.llm import MODEL
from aiaas.llm.runtime import LlmRuntime
from aiaas.llm.settings import LlmSettings
from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings


def main() -> None:
    """Load the configured registry version and serve it."""
    settings = LlmSettings()
    registry = Registry(HomeSettings().registry_dir)
    run_service(
        MODEL,
        lambda ref: LlmRuntime.from_registry(
            registry, ref, device=settings.device, max_sequences=settings.model_instances,
            max_tokens=settings.max_tokens, max_prompt_tokens=settings.max_prompt_tokens,
            max_batch_tokens=settings.max_batch_tokens, chunk_interval_ms=settings.chunk_interval_ms,
            chunk_tokens=settings.chunk_tokens,
        ),
        settings,
        registry,
    )


if __name__ == "__main__":
    main()
