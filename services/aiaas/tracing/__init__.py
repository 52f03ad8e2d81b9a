"""OpenTelemetry for aiaas: the messaging conventions and span attributes (`conventions.py`, re-exported here),
per-job spans (`job_spans.py`), where spans go (`setup.py`) and the local span store (`span_store.py`)."""

from .conventions import *  # noqa: F403 - the package's face: `tracing.JOB_ID`, `tracing.inject_headers`, …
from .conventions import __all__  # noqa: F401
