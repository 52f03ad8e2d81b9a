"""`python -m aiaas.vae`: run the vae service until SIGTERM/SIGINT."""

from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings
from aiaas.vae import MODEL
from aiaas.vae.runtime import VaeRuntime
from aiaas.vae.settings import VaeSettings


def main() -> None:
    """Load the configured registry version and serve it."""
    settings = VaeSettings()
    registry = Registry(HomeSettings().registry_dir)
    run_service(
        MODEL,
        lambda ref: VaeRuntime.from_registry(
            registry, ref, providers=settings.execution_provider, intra_op_threads=settings.session_threads(),
            max_generate=settings.max_generate,
        ),
        settings,
        registry,
    )


if __name__ == "__main__":
    main()
