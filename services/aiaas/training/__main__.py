"""`python -m aiaas.training <model>` (also `aiaas trainer <model>`): run one model type's trainer until SIGTERM."""

import sys

from aiaas.model_types import model_type, names
from aiaas.training.service import run_trainer
from aiaas.training.settings import TrainerSettings


def run_model_trainer(name: str) -> None:
    """Serve training jobs of the registered model type `name` in this process."""
    import torch

    torch.set_num_threads(TrainerSettings().threads)
    run_trainer(model_type(name).trainer())


def main(argv: list[str] | None = None) -> int:
    """Start the named model type's trainer."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in names():
        print(f"usage: python -m aiaas.training <{'|'.join(names())}>", file=sys.stderr)
        return 2
    run_model_trainer(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
