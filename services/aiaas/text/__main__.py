"""`python -m aiaas.text`: run the text service until SIGTERM/SIGINT."""

from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings
from aiaas.text import MODEL
from aiaas.text.runtime import TextRuntime
from aiaas.text.settings import TextSettings


def main() -> None:
    """Load the configured registry version with the configured backend and serve it."""
    settings = TextSettings()
    registry = Registry(HomeSettings().registry_dir)
    limits = settings.limits()

    def load(ref: str) -> TextRuntime:
        """The encoder's call cost is measured on the first load only: later versions load while batches run, which
        would skew it, and share the encoder's backend, precision and threads."""
        nonlocal limits
        runtime = TextRuntime.from_registry(
            registry, ref, backend=settings.backend, precision=settings.precision,
            providers=settings.execution_provider, intra_op_threads=settings.session_threads(),
            max_seq_len=settings.max_seq_len, limits=limits,
        )
        limits = runtime.limits
        return runtime

    run_service(MODEL, load, settings, registry)


if __name__ == "__main__":
    main()
