"""`python -m aiaas.rnn`: run the rnn service until SIGTERM/SIGINT."""

from aiaas.registry.store import Registry
from aiaas.rnn import MODEL
from aiaas.rnn.runtime import RnnRuntime
from aiaas.rnn.settings import RnnSettings
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings


def main() -> None:
    """Load the configured registry version and serve it."""
    settings = RnnSettings()
    registry = Registry(HomeSettings().registry_dir)
    run_service(
        MODEL,
        lambda ref: RnnRuntime.from_registry(
            registry, ref, providers=settings.execution_provider,
            intra_op_threads=settings.session_threads(), limits=settings.limits(),
        ),
        settings,
        registry,
    )


if __name__ == "__main__":
    main()
