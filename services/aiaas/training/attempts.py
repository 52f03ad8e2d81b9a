"""How many times a training job has been started, kept on disk so it survives a crashed trainer.

Each start increments `<home>/training/attempts/<model>/<job_id>`. A job redelivered after
its trainer died is started again until `max_attempts`; then it ends `failed` with a dead
letter instead of crashing trainers forever.

The count is written atomically (a temporary file, fsync, `os.replace`, fsync of the folder), so
a trainer killed mid-write leaves the old count or the new one, never half a number. A file that
still cannot be read as a count (a disk fault, a hand edit) counts as no start at all: the job
then runs again rather than taking the trainer down with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

__all__ = ["AttemptCounter"]

log = logging.getLogger("aiaas.trainer")

_MAX_COUNT_BYTES = 32
"""A count is a few digits; a longer file is not one of ours and is not read whole."""


class AttemptCounter:
    """Start counts per training job, under one directory (shared by a model type's trainers)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def start(self, job_id: str) -> int:
        """Record one more start of `job_id`; returns the attempt number (1 for the first)."""
        path = self._path(job_id)
        count = self._read(path) + 1
        self._write(path, count)
        return count

    def withdraw(self, job_id: str) -> None:
        """The last start does not count: the trainer was stopped (SIGTERM), nothing went wrong with the job."""
        path = self._path(job_id)
        count = self._read(path) - 1
        if count > 0:
            self._write(path, count)
        else:
            path.unlink(missing_ok=True)

    def forget(self, job_id: str) -> None:
        """The job ended (either way): its count is no longer needed."""
        self._path(job_id).unlink(missing_ok=True)

    def _path(self, job_id: str) -> Path:
        # Job ids are caller-chosen: hash them so no id can name a path outside the folder.
        return self.root / hashlib.sha256(job_id.encode(errors="surrogatepass")).hexdigest()[:32]

    @staticmethod
    def _read(path: Path) -> int:
        """The stored count; 0 when there is none or it is not a count."""
        try:
            with path.open("rb") as file:
                text = file.read(_MAX_COUNT_BYTES + 1)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("attempt count %s cannot be read (%s); counting from 0", path.name, exc)
            return 0
        try:
            count = int(text.decode("ascii")) if len(text) <= _MAX_COUNT_BYTES else -1
        except (UnicodeDecodeError, ValueError):
            count = -1
        if count < 0:
            log.warning("attempt count %s is not a count (%r); counting from 0", path.name, text[:_MAX_COUNT_BYTES])
            return 0
        return count

    @staticmethod
    def _write(path: Path, count: int) -> None:
        """Replace the count atomically: a crash leaves the old file or the new one, complete."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(str(count).encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
