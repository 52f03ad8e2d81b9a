"""`python -m aiaas.recsys`: run the recsys service until SIGTERM/SIGINT."""

from aiaas.recsys import MODEL
from aiaas.recsys.runtime import RecsysRuntime
from aiaas.recsys.settings import RecsysSettings
from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings


def main() -> None:
    """Load the configured registry version and serve it."""
    settings = RecsysSettings()
    registry = Registry(HomeSettings().registry_dir)
    run_service(
        MODEL,
        lambda ref: RecsysRuntime.from_registry(
            registry, ref, providers=settings.execution_provider,
            intra_op_threads=settings.session_threads(), max_k=settings.max_k,
        ),
        settings,
        registry,
    )


if __name__ == "__main__":
    main()
