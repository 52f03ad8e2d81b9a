"""`python -m aiaas.training <model>`: run the trainer for one model type until SIGTERM/SIGINT."""

import sys

from aiaas.training.service import run_trainer

TRAINERS = {"vision": "aiaas.vision.training:VisionTrainer", "text": "aiaas.text.training:TextTrainer",
            "recsys": "aiaas.recsys.training:RecsysTrainer"}
"""Model types that take training jobs, and where their trainer lives."""


def main(argv: list[str] | None = None) -> int:
    """Start the named model type's trainer."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in TRAINERS:
        print(f"usage: python -m aiaas.training <{'|'.join(TRAINERS)}>", file=sys.stderr)
        return 2
    import importlib

    import torch

    from aiaas.training.settings import TrainerSettings

    torch.set_num_threads(TrainerSettings().threads)
    module, name = TRAINERS[args[0]].split(":")
    run_trainer(getattr(importlib.import_module(module), name)())
    return 0


if __name__ == "__main__":
    sys.exit(main())
