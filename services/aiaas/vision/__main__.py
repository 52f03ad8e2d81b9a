"""`python -m aiaas.vision`: run the vision service until SIGTERM/SIGINT."""

from ..registry import Registry
from ..service import run_service
from ..settings import HomeSettings
from . import MODEL
from .runtime import VisionRuntime
from .settings import VisionSettings


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
