"""A model whose batch call waits instead of computing: a stand-in for a GPU, served by the real service code.

    .venv/bin/python -m bench.waiting_model                         # serves `<prefix>.waiting.infer`
    AIAAS_WAITING_BATCH_MS=20 AIAAS_WAITING_MAX_BATCH=16 .venv/bin/python -m bench.waiting_model

`WaitingRuntime.infer(items)` sleeps `batch_ms + per_job_ms × len(items)` and answers each job with one tiny
output (`{"n": <its input n>}`). A sleep releases the GIL, so with the service's default `model_calls="thread"`
the call runs on the model thread while the event loop goes on fetching and publishing — as a call into a GPU
does — and one replica's throughput is `max_batch / (batch_ms + per_job_ms × max_batch)` jobs/s whatever the
CPU, as long as the Kafka path keeps up. That is what `bench/scaling.py` needs: replicas that are limited by
their model, not by the two cores of the machine, so adding replicas adds throughput until the broker, the
publisher or the CPU runs out.

The process is `aiaas.serving.service.run_service` with this runtime: the same consumer group, pipeline,
producer, metrics endpoint (`/metrics`, `/readyz`, a target file under `<AIAAS_HOME>/metrics/targets/`) and
settings (prefix `AIAAS_WAITING_`, e.g. AIAAS_WAITING_INSTANCE_ID, AIAAS_WAITING_MAX_BATCH) as a built-in model
type's service. It loads nothing from the registry: every ref is served by the one version, "1".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaas.contract.envelopes import Job
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.serving.runtime import Outputs
from aiaas.settings import HomeSettings, WorkerSettings

__all__ = ["MODEL", "WaitingRuntime", "WaitingSettings", "per_replica_rate"]

MODEL = "waiting"
"""The model type's name: its topics are `<prefix>.waiting.infer` / `.results`."""


class WaitingSettings(WorkerSettings):
    """The service's settings (prefix `AIAAS_WAITING_`) and the model's two waits."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_WAITING_", extra="ignore")

    batch_ms: float = Field(20.0, ge=0, description="Fixed wait of every batch call (a kernel launch, a transfer).")
    per_job_ms: float = Field(0.2, ge=0, description="Further wait per job in the batch.")


def per_replica_rate(max_batch: int, batch_ms: float, per_job_ms: float) -> float:
    """Jobs/s of one replica that always has a full batch: max_batch / (batch_ms + per_job_ms × max_batch)."""
    return max_batch / ((batch_ms + per_job_ms * max_batch) / 1000)


class WaitingRuntime:
    """A ModelRuntime (`aiaas.serving.runtime`) whose `infer` sleeps; version "1", every ref."""

    model = MODEL
    version = "1"
    providers = ("simulated accelerator",)
    """Not a CPU provider: a model that waits is not computing on the CPU (`computes_on_cpu` is False)."""

    def __init__(self, batch_ms: float = 20.0, per_job_ms: float = 0.2) -> None:
        self.batch_s, self.per_job_s = batch_ms / 1000, per_job_ms / 1000
        self.calls = 0

    def serves(self, ref: str) -> bool:
        """The one version serves every ref."""
        return True

    def prepare(self, job: Job) -> int:
        """The job's `n` (an int, default 0): echoed in its output."""
        n = job.inputs.get("n", 0)
        if type(n) is not int:
            raise InvalidJob("waiting jobs take an optional int `n`")
        return n

    def infer(self, items: Sequence[int]) -> list[Outputs]:
        """Wait `batch_ms + per_job_ms × len(items)`, then one `{"n": n}` per item."""
        time.sleep(self.batch_s + self.per_job_s * len(items))
        self.calls += 1
        return [{"n": n} for n in items]


def main() -> None:
    """Serve the waiting model until SIGTERM (flags override the AIAAS_WAITING_* settings)."""
    from aiaas.serving.service import run_service

    parser = argparse.ArgumentParser(description="a service whose model waits (bench/scaling.py)")
    parser.add_argument("--batch-ms", type=float, default=None, help="fixed wait per batch (AIAAS_WAITING_BATCH_MS)")
    parser.add_argument("--per-job-ms", type=float, default=None, help="wait per job (AIAAS_WAITING_PER_JOB_MS)")
    args = parser.parse_args()
    settings = WaitingSettings()
    batch_ms = settings.batch_ms if args.batch_ms is None else args.batch_ms
    per_job_ms = settings.per_job_ms if args.per_job_ms is None else args.per_job_ms
    registry = Registry(HomeSettings().registry_dir)
    run_service(MODEL, lambda ref: WaitingRuntime(batch_ms, per_job_ms), settings, registry)


if __name__ == "__main__":
    main()
