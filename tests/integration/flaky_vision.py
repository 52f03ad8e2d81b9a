"""`python -m tests.integration.flaky_vision`: the real vision service whose model call fails on request.

A job with the attribute `fail_times=N` makes the model call that holds it raise ModelFailure
(a retriable error) the first N times this process sees that job id. Everything else — the
ONNX model, Kafka, the retry topic, the dead-letter path — is the real service.
"""

from collections import Counter

from aiaas.errors import ModelFailure
from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings
from aiaas.vision import MODEL
from aiaas.vision.runtime import VisionRuntime
from aiaas.vision.settings import VisionSettings


class FlakyVision:
    """Wraps a VisionRuntime; fails model calls for jobs that ask for it."""

    def __init__(self, runtime: VisionRuntime) -> None:
        self._runtime, self._seen = runtime, Counter()
        self.model, self.version = runtime.model, runtime.version

    def serves(self, ref: str) -> bool:
        return self._runtime.serves(ref)

    def prepare(self, job):
        return job.job_id, int(job.attributes.get("fail_times", 0)), self._runtime.prepare(job)

    def infer(self, items):
        for job_id, fail_times, _ in items:
            if self._seen[job_id] < fail_times:
                # A failing batch is re-run job by job, so count one failure per attempt: the single-job call.
                if len(items) == 1:
                    self._seen[job_id] += 1
                raise ModelFailure(f"injected failure {self._seen[job_id]} of {fail_times} for {job_id}")
        return self._runtime.infer([item for _, _, item in items])

    def close(self) -> None:
        close = getattr(self._runtime, "close", None)
        if close:
            close()


def main() -> None:
    settings = VisionSettings()
    registry = Registry(HomeSettings().registry_dir)
    run_service(MODEL, lambda ref: FlakyVision(VisionRuntime.from_registry(registry, ref)), settings, registry)


if __name__ == "__main__":
    main()
