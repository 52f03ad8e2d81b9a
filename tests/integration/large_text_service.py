"""`python -m tests.integration.large_text_service`: a `text` service whose model answers each job with a long text.

The real service (pipeline, outcome memory, Kafka) around a runtime that costs nothing: each result is the job's
own text repeated to `AIAAS_TEXT_SOAK_RESULT_BYTES` characters, so every job leaves a large, distinct outcome
for the service to remember. The memory soak test runs it.
"""

import os
from collections.abc import Sequence

from aiaas.contract.envelopes import Job
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.serving.service import run_service
from aiaas.settings import HomeSettings
from aiaas.text.settings import TextSettings


class LargeTextRuntime:
    """Answers `{"text": ...}` with `{"text": <that text repeated to result_bytes characters>}`."""

    model = "text"
    version = "1"

    def __init__(self, result_bytes: int) -> None:
        self.result_bytes = result_bytes

    def serves(self, ref: str) -> bool:
        return ref in ("1", "production")

    def prepare(self, job: Job) -> str:
        text = job.inputs.get("text")
        if not isinstance(text, str) or not text:
            raise InvalidJob("needs a non-empty text")
        return text

    def infer(self, items: Sequence[str]) -> list[dict]:
        return [{"text": (text * (self.result_bytes // len(text) + 1))[: self.result_bytes]} for text in items]


def main() -> None:
    result_bytes = int(os.environ.get("AIAAS_TEXT_SOAK_RESULT_BYTES", "65536"))  # test-only knob
    registry = Registry(HomeSettings().registry_dir)
    run_service("text", lambda ref: LargeTextRuntime(result_bytes), TextSettings(), registry)


if __name__ == "__main__":
    main()
