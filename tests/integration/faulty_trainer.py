"""`python -m tests.integration.faulty_trainer`: the real vision trainer, whose training fails on request.

A training job with the attribute `fault` makes the training thread misbehave before it trains:
`OSError`, `MemoryError`, `SystemExit`, `KeyError` raise that exception; `hang` blocks for a
minute without ever checking its stop signal. Everything else (Kafka, the registry, the dead
letters, the time limit) is the real trainer.
"""

import time

from aiaas.training.service import run_trainer
from aiaas.vision.training import VisionTrainer

_FAULTS = {"OSError": OSError(28, "No space left on device"), "MemoryError": MemoryError(),
           "SystemExit": SystemExit(1), "KeyError": KeyError("weights")}


class FaultyVision(VisionTrainer):
    """VisionTrainer that raises (or hangs) for jobs that ask for it."""

    def train(self, request, registry, workdir, progress, stop=None):
        fault = request.job.attributes.get("fault")
        if fault == "hang":
            time.sleep(60)
        elif fault in _FAULTS:
            raise _FAULTS[fault]
        return super().train(request, registry, workdir, progress, stop)


if __name__ == "__main__":
    run_trainer(FaultyVision())
