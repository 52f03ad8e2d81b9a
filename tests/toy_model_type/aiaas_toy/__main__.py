"""`python -m aiaas_toy` (or `aiaas serve toy`): the toy service."""

from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings
from aiaas_toy import MODEL
from aiaas_toy.runtime import ToyRuntime
from aiaas_toy.settings import ToySettings


def main() -> None:
    registry = Registry(HomeSettings().registry_dir)
    run_service(MODEL, lambda ref: ToyRuntime.from_registry(registry, ref), ToySettings(), registry)


if __name__ == "__main__":
    main()
