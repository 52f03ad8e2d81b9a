"""How many times a training job has been started, kept on disk so it survives a crashed trainer.

Each start increments `<home>/training/attempts/<model>/<job_id>`. A job redelivered after
its trainer died is started again until `max_attempts`; then it ends `failed` with a dead
letter instead of crashing trainers forever.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["AttemptCounter"]


class AttemptCounter:
    """Start counts per training job, under one directory (shared by a model type's trainers)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def start(self, job_id: str) -> int:
        """Record one more start of `job_id`; returns the attempt number (1 for the first)."""
        path = self._path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        count = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(count))
        return count

    def forget(self, job_id: str) -> None:
        """The job ended (either way): its count is no longer needed."""
        self._path(job_id).unlink(missing_ok=True)

    def _path(self, job_id: str) -> Path:
        # Job ids are caller-chosen: hash them so no id can name a path outside the folder.
        return self.root / hashlib.sha256(job_id.encode()).hexdigest()[:32]
