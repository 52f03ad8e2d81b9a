"""`python -m aiaas.vision`: run the vision service until SIGTERM/SIGINT."""

from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings
from aiaas.vision import MODEL
from aiaas.vision.runtime import VisionRuntime
from aiaas.vision.settings import VisionSettings


def main() -> None:
    """Load the configured registry version and serve it."""
    settings = VisionSettings()
    registry = Registry(HomeSettings().registry_dir)
    run_service(
        MODEL,
        lambda ref: VisionRuntime.from_registry(
            registry, ref, providers=settings.execution_provider,
            intra_op_threads=settings.session_threads(),
        ),
        settings,
        registry,
    )


if __name__ == "__main__":
    main()
